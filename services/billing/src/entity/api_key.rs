//! `api_keys`: one row per issued key. Only the SHA-256 of the secret is stored.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// UUID v7, as text.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// The first characters of the secret, safe to display (`sk-AbCd1234E`).
    pub prefix: String,
    /// Lowercase hex SHA-256 of the full secret.
    #[sea_orm(unique)]
    pub secret_hash: String,
    pub tier: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; set once when the key is revoked.
    pub revoked_at: Option<i64>,
    /// Unix milliseconds of the last change, for operators; caches follow `change_seq` instead.
    pub updated_at: i64,
    /// Unix milliseconds after which the key is refused; `None`: it never expires.
    pub expires_at: Option<i64>,
    /// The key's own requests per minute, replacing its tier's.
    pub rpm_override: Option<i64>,
    /// The key's own monthly request quota, replacing its tier's.
    pub monthly_requests_override: Option<i64>,
    /// The value of the `key_changes` sequence its last change took (see
    /// [`crate::keys::refresh`]); caches poll it to notice changes made elsewhere.
    pub change_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
