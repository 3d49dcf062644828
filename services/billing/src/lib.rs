//! Tollgate's billing service: API keys (hashed secrets, create/list/rotate/revoke/update, expiry),
//! tiers (with model allow-lists), per-key limits (requests per minute, requests per calendar
//! month, overridable per key; shared through Redis across replicas), prepaid balances and
//! monthly budgets ([`accounts`]), the prices requests are billed at (the catalogue's, through
//! [`pricing`]), the usage ledger every request is settled into, and the Admin service that
//! administers keys.
//!
//! The hot path reads no database for a known key: keys live in [`keys::KeyCache`] (invalidated
//! by the `InvalidateKey` RPC and by a poll of the keys' change sequence), limits are in memory
//! ([`limits`]) or, for replicas, in Redis ([`shared_limits`]), and settlements are
//! group-committed by one writer ([`ledger`]). Only keys with a balance or budget pay a database
//! write at admission (their reservation).
//!
//! A process assembles it as:
//! ```no_run
//! # async fn run(catalog_channel: tonic::transport::Channel) -> Result<(), tollgate_billing::BillingError> {
//! use tollgate_billing::{BillingService, DatabaseConfig, Tiers, TierConfig};
//! let db = tollgate_billing::connect(&DatabaseConfig::default()).await?;
//! tollgate_billing::migrate(&db).await?;
//! let pro = TierConfig { name: "pro".into(), rpm: 30, monthly_requests: 3000, ..Default::default() };
//! let tiers = Tiers::new(vec![pro])?;
//! // Prices come from the Catalog service: over the network here, in-process in the monolith.
//! let catalog = tollgate::transport::network(catalog_channel);
//! let refresh = tollgate_billing::DEFAULT_KEY_REFRESH_INTERVAL;
//! let billing = BillingService::new(db, tiers, catalog, refresh).await?;
//! let server = tollgate::v1::billing_server::BillingServer::new(billing.clone());
//! # let _ = server;
//! billing.shutdown().await;
//! # Ok(()) }
//! ```

pub mod accounts;
pub mod admin;
mod admissions;
pub mod billing_api;
pub mod clock;
pub mod config;
pub mod db;
pub mod entity;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod metering;
pub mod migration;
pub mod pricing;
mod reports;
pub mod self_rotation;
pub mod service;
pub mod shared_limits;
pub mod sqlite_writer;
mod streams;
pub mod tasks;
pub mod telemetry;
pub mod writer_connection;

pub use accounts::{KeyAccount, KeyMoney};
pub use admin::{AdminService, AdminToken, LocalOperator};
pub use config::{ConfigError, DatabaseConfig, Durability, RedisConfig, Tier, TierConfig, Tiers};
pub use db::{connect, migrate};
pub use error::BillingError;
pub use keys::{
    KeyRecord, KeyUpdate, NewKey, SecretKey, create_key, create_key_with, list_keys, revoke_key,
    rotate_key, update_key,
};
pub use migration::Migrator;
pub use service::{BillingOptions, BillingService};
pub use shared_limits::SharedLimits;
pub use tasks::DEFAULT_KEY_REFRESH_INTERVAL;
