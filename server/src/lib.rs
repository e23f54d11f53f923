//! `hush-server`: the Hush homeserver library behind the `hushd` binary.
//!
//! Layers: `api` (thin axum handlers) -> `service` (domain logic, background workers)
//! -> `store` (the only place with SQL, SQLite and PostgreSQL).

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod middleware;
pub mod password;
pub mod ratelimit;
pub mod serve;
pub mod service;
pub mod signing_key;
pub mod state;
pub mod store;
pub mod xmatrix_auth;
