//! `GET /health/live` (the process answers) and `GET /health/ready` (its dependencies —
//! the database and the event bus — answer too).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::AppState;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (db, bus) = tokio::join!(state.db.health(), state.bus.health());
    let status = |r: bool| if r { "ok" } else { "unavailable" };
    let body = json!({
        "status": status(db.is_ok() && bus.is_ok()),
        "checks": {"database": status(db.is_ok()), "event_bus": status(bus.is_ok())},
    });
    if db.is_ok() && bus.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
