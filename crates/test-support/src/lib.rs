//! Test helpers. Fakes exist only for what cannot run here, and they speak the real wire
//! protocol over a real socket on `127.0.0.1:0`. [`services`] runs the workspace's own
//! binaries as processes (for `integration-tests`), [`nats`] gives each test its own
//! subject prefix, [`eval`] reads the shared evaluation set.

pub mod db;
pub mod eval;
pub mod kyrodb_fake;
pub mod model;
pub mod nats;
pub mod services;
