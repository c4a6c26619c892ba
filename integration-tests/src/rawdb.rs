//! Every row of every table of a PostgreSQL database, as JSON text: what an operator (or
//! an attacker with a backup) would see, bypassing the application's own types.

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    json: String,
}

/// `(table, row as JSON)` for every row of every table in the `public` schema.
///
/// # Panics
/// If the database cannot be read.
pub async fn dump_postgres(url: &str) -> Vec<(String, String)> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .expect("connect for a raw dump");
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .expect("list tables");
    let mut rows = Vec::new();
    for Name { name } in tables {
        let quoted = name.replace('"', "\"\"");
        let loaded: Vec<Row> = diesel::sql_query(format!(
            "SELECT row_to_json(t)::text AS json FROM \"{quoted}\" t"
        ))
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("dump table {name}: {e}"));
        rows.extend(loaded.into_iter().map(|r| (name.clone(), r.json)));
    }
    rows
}
