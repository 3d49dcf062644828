//! Adds to `api_keys` the key's expiry (`expires_at`, Unix ms) and its own limits replacing its
//! tier's (`rpm_override`, `monthly_requests_override`). All three are nullable: existing keys
//! never expire and follow their tier. One `ALTER TABLE` per column, as SQLite requires.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    ExpiresAt,
    RpmOverride,
    MonthlyRequestsOverride,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ApiKeys::ExpiresAt,
            ApiKeys::RpmOverride,
            ApiKeys::MonthlyRequestsOverride,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(big_integer_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ApiKeys::MonthlyRequestsOverride,
            ApiKeys::RpmOverride,
            ApiKeys::ExpiresAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
