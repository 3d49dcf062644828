//! Creates `reservations`: the worst-case cost held against a key's balance or budget by each
//! admitted request until it settles. Settlement deletes the row in the ledger transaction; a row
//! whose request never settled (the process died) is released by the sweep once `expires_at`
//! has passed.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Reservations {
    Table,
    RequestId,
    KeyId,
    AmountPicodollars,
    CreatedAt,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Reservations::Table)
                    .if_not_exists()
                    .col(text(Reservations::RequestId).primary_key())
                    .col(text(Reservations::KeyId))
                    .col(big_integer(Reservations::AmountPicodollars))
                    .col(big_integer(Reservations::CreatedAt))
                    .col(big_integer(Reservations::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_reservations_expires_at")
                    .table(Reservations::Table)
                    .col(Reservations::ExpiresAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Reservations::Table).to_owned())
            .await
    }
}
