//! Creates `key_accounts`: one row of money per key (prepaid balance, monthly budget, the amount
//! reserved by requests in flight, and running spend totals that the ledger settlement keeps equal
//! to the sums of the key's ledger rows). Existing keys get a row whose spend totals are summed
//! from the ledger they already have.

use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyAccounts {
    Table,
    KeyId,
    BalancePicodollars,
    MonthlyBudgetPicodollars,
    ReservedPicodollars,
    CreditedTotalPicodollars,
    WrittenOffPicodollars,
    SpentTotalPicodollars,
    SpentMonthPicodollars,
    SpentPeriod,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KeyAccounts::Table)
                    .if_not_exists()
                    .col(text(KeyAccounts::KeyId).primary_key())
                    .col(big_integer_null(KeyAccounts::BalancePicodollars))
                    .col(big_integer_null(KeyAccounts::MonthlyBudgetPicodollars))
                    .col(big_integer(KeyAccounts::ReservedPicodollars).default(0))
                    .col(big_integer(KeyAccounts::CreditedTotalPicodollars).default(0))
                    .col(big_integer(KeyAccounts::WrittenOffPicodollars).default(0))
                    .col(big_integer(KeyAccounts::SpentTotalPicodollars).default(0))
                    .col(big_integer(KeyAccounts::SpentMonthPicodollars).default(0))
                    .col(text(KeyAccounts::SpentPeriod).default(""))
                    .col(big_integer(KeyAccounts::UpdatedAt).default(0))
                    .to_owned(),
            )
            .await?;
        // Keys issued before this migration: spend totals from the rows they already have, the
        // month's spend for the month the migration runs in.
        let period = chrono::Utc::now().format("%Y-%m").to_string();
        // The period is `YYYY-MM` from the clock, never input, so it is safe as a literal.
        let sql = format!(
            "INSERT INTO key_accounts (key_id, spent_total_picodollars, spent_month_picodollars, \
             spent_period) \
             SELECT k.id, \
               CAST(COALESCE((SELECT SUM(l.cost_picodollars) FROM usage_ledger l \
                 WHERE l.key_id = k.id), 0) AS BIGINT), \
               CAST(COALESCE((SELECT SUM(l.cost_picodollars) FROM usage_ledger l \
                 WHERE l.key_id = k.id AND l.period = '{period}'), 0) AS BIGINT), \
               '{period}' \
             FROM api_keys k \
             WHERE NOT EXISTS (SELECT 1 FROM key_accounts a WHERE a.key_id = k.id)"
        );
        manager.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeyAccounts::Table).to_owned())
            .await
    }
}
