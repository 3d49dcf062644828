//! The Inference service: validates a chat request, resolves its model through Catalog, admits
//! it through Billing, calls the upstream provider through one adapter per provider kind, streams
//! the answer back chunk for chunk, and settles the usage with Billing before the response ends.

pub mod config;
mod deadline;
pub mod error;
pub mod images;
pub mod providers;
pub mod routing;
pub mod service;
pub mod shared_cooldown;
mod streaming;
pub mod telemetry;
pub mod thinking;
pub mod token_bounds;
pub mod validate;

pub use config::{ClientDisconnect, ClientPolicy, ProviderConfig, ProviderKind};
pub use error::UpstreamError;
pub use images::{ImageFetcher, ImagesConfig};
pub use providers::{Provider, Providers};
pub use routing::{DeploymentHealth, RoutingConfig};
pub use service::InferenceService;
pub use shared_cooldown::SharedCooldown;
