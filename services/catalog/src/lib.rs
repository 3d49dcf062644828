//! The Catalog service: which models and aliases exist, which provider serves each, what they
//! cost and what they can do. The catalogue comes from configuration and is validated once into
//! a [`Catalog`] that cannot be inconsistent; the gRPC service answers from it without I/O.

pub mod catalog;
pub mod config;
pub mod service;

pub use catalog::{Catalog, CatalogError};
pub use config::{
    AliasConfig, DeploymentConfig, ModelConfig, Price, StrategyConfig, ThinkingConfig,
};
pub use service::CatalogService;
