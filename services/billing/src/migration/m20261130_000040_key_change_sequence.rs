//! A monotonic change sequence for `api_keys`, so the key-refresh poll stops depending on
//! wall-clock timestamps that can skew between writers. `key_changes` holds one row whose `seq`
//! every change to a key increments, inside the change's own transaction, and copies into the
//! key's `change_seq`. The row lock serialises writers, so sequence numbers commit in order and a
//! poll for `change_seq > last_seen` misses nothing, on SQLite and PostgreSQL alike. The index on
//! `updated_at`, which only the old poll read, is dropped for one on `change_seq`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyChanges {
    Table,
    Id,
    Seq,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    ChangeSeq,
    UpdatedAt,
}

const UPDATED_AT_INDEX: &str = "ix_api_keys_updated_at";
const CHANGE_SEQ_INDEX: &str = "ix_api_keys_change_seq";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KeyChanges::Table)
                    .if_not_exists()
                    .col(integer(KeyChanges::Id).primary_key())
                    .col(big_integer(KeyChanges::Seq))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared("INSERT INTO key_changes (id, seq) VALUES (1, 0)")
            .await?;
        // Existing keys are at 0: a process starts polling from the sequence's current value.
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(big_integer(ApiKeys::ChangeSeq).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(CHANGE_SEQ_INDEX)
                    .table(ApiKeys::Table)
                    .col(ApiKeys::ChangeSeq)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(UPDATED_AT_INDEX)
                    .table(ApiKeys::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(UPDATED_AT_INDEX)
                    .table(ApiKeys::Table)
                    .col(ApiKeys::UpdatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(CHANGE_SEQ_INDEX)
                    .table(ApiKeys::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::ChangeSeq)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(KeyChanges::Table).to_owned())
            .await
    }
}
