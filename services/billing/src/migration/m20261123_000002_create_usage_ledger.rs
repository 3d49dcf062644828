//! Creates `usage_ledger`. `request_id` is unique: the ledger is idempotent by it. Indexes serve
//! the quota count and usage sums (`key_id, period`) and per-key history (`key_id, created_at`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageLedger {
    Table,
    Id,
    RequestId,
    KeyId,
    RequestedModel,
    ModelId,
    Provider,
    UpstreamModel,
    PromptTokens,
    CachedPromptTokens,
    CompletionTokens,
    ReasoningTokens,
    CostPicodollars,
    Outcome,
    Streamed,
    CreatedAt,
    Period,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UsageLedger::Table)
                    .if_not_exists()
                    .col(big_integer(UsageLedger::Id).auto_increment().primary_key())
                    .col(text(UsageLedger::RequestId))
                    .col(text(UsageLedger::KeyId))
                    .col(text(UsageLedger::RequestedModel))
                    .col(text(UsageLedger::ModelId))
                    .col(text(UsageLedger::Provider))
                    .col(text(UsageLedger::UpstreamModel))
                    .col(big_integer(UsageLedger::PromptTokens))
                    .col(big_integer(UsageLedger::CachedPromptTokens))
                    .col(big_integer(UsageLedger::CompletionTokens))
                    .col(big_integer(UsageLedger::ReasoningTokens))
                    .col(big_integer(UsageLedger::CostPicodollars))
                    .col(text(UsageLedger::Outcome))
                    .col(boolean(UsageLedger::Streamed))
                    .col(big_integer(UsageLedger::CreatedAt))
                    .col(text(UsageLedger::Period))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_usage_ledger_request_id")
                    .table(UsageLedger::Table)
                    .col(UsageLedger::RequestId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_usage_ledger_key_period")
                    .table(UsageLedger::Table)
                    .col(UsageLedger::KeyId)
                    .col(UsageLedger::Period)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_usage_ledger_key_created_at")
                    .table(UsageLedger::Table)
                    .col(UsageLedger::KeyId)
                    .col(UsageLedger::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UsageLedger::Table).to_owned())
            .await
    }
}
