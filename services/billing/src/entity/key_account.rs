//! `key_accounts`: the money of one key. Written with conditional SQL in [`crate::accounts`];
//! this entity serves the reads.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "key_accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    /// Prepaid balance left; `None` when the key is not prepaid (unlimited in money).
    pub balance_picodollars: Option<i64>,
    /// Spend allowed per UTC month; `None` for no budget.
    pub monthly_budget_picodollars: Option<i64>,
    /// Held by admitted requests that have not settled yet.
    pub reserved_picodollars: i64,
    /// Every credit ever made to the balance (the initial balance and the top-ups).
    pub credited_total_picodollars: i64,
    /// Cost that exceeded the balance at settlement and was not debited (the balance stops at 0).
    pub written_off_picodollars: i64,
    /// Sum of the costs of the key's ledger rows.
    pub spent_total_picodollars: i64,
    /// Sum of the costs of the key's ledger rows in `spent_period`.
    pub spent_month_picodollars: i64,
    /// `YYYY-MM` of `spent_month_picodollars`.
    pub spent_period: String,
    /// Unix milliseconds of the last credit or budget change.
    pub updated_at: i64,
    /// What settlements cost above their reservations, summed (each also logged at WARN).
    pub over_reserved_picodollars: i64,
    /// How many settlements cost more than their reservation.
    pub over_reserved_count: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
