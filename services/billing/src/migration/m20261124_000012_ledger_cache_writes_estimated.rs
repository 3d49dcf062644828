//! Adds to `usage_ledger` the prompt tokens written to the provider's cache (billed at the
//! cache-write price) and the `estimated` mark of rows whose usage the gateway counted itself
//! because the upstream never reported it. One column per statement: SQLite alters one at a time.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageLedger {
    Table,
    CacheWriteTokens,
    Estimated,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager
            .has_column("usage_ledger", "cache_write_tokens")
            .await?
        {
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageLedger::Table)
                        .add_column(big_integer(UsageLedger::CacheWriteTokens).default(0))
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column("usage_ledger", "estimated").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageLedger::Table)
                        .add_column(boolean(UsageLedger::Estimated).default(false))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [UsageLedger::CacheWriteTokens, UsageLedger::Estimated] {
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageLedger::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
