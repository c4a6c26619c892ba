//! Test helpers. Fakes exist only for what cannot run here, and they speak the real wire
//! protocol over a real socket on `127.0.0.1:0`.

pub mod db;
pub mod kyrodb_fake;
pub mod model;
