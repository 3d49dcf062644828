//! Adds to `key_accounts` what settlements cost above their reservations: the excess summed
//! (`over_reserved_picodollars`) and how many settlements had one (`over_reserved_count`). A
//! reservation is the request's worst case, so an excess means a bound was wrong (an upstream
//! billing past `max_tokens`, an image dearer than the model's `image_tokens_max`): operators see
//! it counted here (and logged), never absorbed silently. One column per statement: SQLite alters
//! one at a time.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyAccounts {
    Table,
    OverReservedPicodollars,
    OverReservedCount,
}

/// The columns added, in order.
fn columns() -> [KeyAccounts; 2] {
    [
        KeyAccounts::OverReservedPicodollars,
        KeyAccounts::OverReservedCount,
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(KeyAccounts::Table)
                        .add_column(big_integer(column).default(0))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(KeyAccounts::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
