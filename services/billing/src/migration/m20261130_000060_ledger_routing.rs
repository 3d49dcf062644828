//! Adds to `usage_ledger` what routing decided for each request: the deployment of the serving
//! model (`deployment`; the model itself is `model_id`, a fallback's id when one served) and
//! how many upstream calls it took (`attempts`). Both nullable: rows written before routing
//! have neither. One column per statement: SQLite alters one at a time.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageLedger {
    Table,
    Deployment,
    Attempts,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            string_null(UsageLedger::Deployment),
            integer_null(UsageLedger::Attempts),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageLedger::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [UsageLedger::Deployment, UsageLedger::Attempts] {
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
