//! `usage_ledger`: one row per settled request, unique by `request_id`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_ledger")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub request_id: String,
    pub key_id: String,
    pub requested_model: String,
    pub model_id: String,
    pub provider: String,
    pub upstream_model: String,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
    /// Prompt tokens written to the provider's cache (billed at the cache-write price).
    pub cache_write_tokens: i64,
    pub cost_picodollars: i64,
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: String,
    pub streamed: bool,
    /// The token counts are the gateway's estimate: the upstream never reported its own.
    pub estimated: bool,
    /// Unix milliseconds of settlement.
    pub created_at: i64,
    /// The UTC month of settlement, `YYYY-MM`.
    pub period: String,
    /// The deployment of `model_id` (the model that served) that served or last failed; NULL
    /// on rows written before routing.
    pub deployment: Option<String>,
    /// Upstream calls the request took (1 without a retry); NULL on rows written before routing.
    pub attempts: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
