//! `hush-server`: the Hush homeserver library behind the `hushd` binary.
//!
//! Layers: `api` (thin axum handlers) -> `service` (domain logic, background workers)
//! -> `store` (the only place with SQL, SQLite and PostgreSQL).

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod password;
pub mod service;
pub mod state;
pub mod store;
