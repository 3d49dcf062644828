//! The REST facade and the process that assembles Tollgate. The facade speaks OpenAI's JSON and
//! SSE to clients and reaches the services only through their gRPC interfaces (called in-process
//! in monolithic mode), so any service can move to its own process without changing the facade.

mod admin;
pub mod app;
mod chat_completions;
pub mod config;
mod console;
pub mod cors;
mod dashboard;
mod error;
pub mod expiry;
mod extract;
#[cfg(test)]
mod fuzz;
mod grpc_span;
pub mod health;
pub mod http_listener;
mod json_fields;
pub mod key_view;
pub mod management_limit;
mod messages;
pub mod metrics_endpoint;
mod models;
mod named_events;
mod opaque_reasoning;
pub mod reflection;
mod request_id;
mod request_span;
mod responses;
pub mod server;
mod sse_json;
pub mod traces;
mod usage;

pub use app::{AppState, app};
pub use config::{Config, ConfigError, Runtime};
