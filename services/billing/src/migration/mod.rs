//! The billing schema as dated sea-orm migrations, portable across SQLite and PostgreSQL (schema
//! builder only, no raw SQL). [`Migrator`] runs them in order and records them in
//! `seaql_migrations`, so running it again is a no-op.

use sea_orm_migration::prelude::*;

mod m20261123_000001_create_api_keys;
mod m20261123_000002_create_usage_ledger;
mod m20261124_000010_create_key_accounts;
mod m20261124_000011_create_reservations;
mod m20261124_000012_ledger_cache_writes_estimated;
mod m20261124_000030_key_expiry_and_limit_overrides;
mod m20261130_000040_key_change_sequence;
mod m20261130_000050_key_overruns;
mod m20261130_000060_ledger_routing;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_api_keys::Migration),
            Box::new(m20261123_000002_create_usage_ledger::Migration),
            Box::new(m20261124_000010_create_key_accounts::Migration),
            Box::new(m20261124_000011_create_reservations::Migration),
            Box::new(m20261124_000012_ledger_cache_writes_estimated::Migration),
            Box::new(m20261124_000030_key_expiry_and_limit_overrides::Migration),
            Box::new(m20261130_000040_key_change_sequence::Migration),
            Box::new(m20261130_000050_key_overruns::Migration),
            Box::new(m20261130_000060_ledger_routing::Migration),
        ]
    }
}
