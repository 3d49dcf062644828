//! Noticing key changes made by other processes (the CLI, another replica) without trusting
//! anyone's clock. Every change to a key takes the next value of a database sequence (the one
//! row of `key_changes`) in its own transaction and stores it in the key's `change_seq`
//! ([`record_change`]); [`KeyRefresher`] polls for rows whose `change_seq` is above the last one
//! it saw and evicts them from a [`KeyCache`].
//!
//! The increment locks the sequence row until the change commits (a row lock on PostgreSQL, the
//! write lock on SQLite), so changes commit in sequence order: once a poll has seen `n`, every
//! change numbered below `n` is visible too, and a writer whose clock is behind is noticed like
//! any other.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::cache::KeyCache;
use crate::accounts::statement;
use crate::entity::api_key;
use crate::error::BillingError;

/// Marks the key `key_id` changed: takes the next value of the change sequence and stores it in
/// the key's `change_seq`. Call it inside the transaction that makes the change, so the change
/// and its number commit together.
pub async fn record_change(txn: &impl ConnectionTrait, key_id: &str) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    txn.execute(statement(
        backend,
        "UPDATE key_changes SET seq = seq + 1 WHERE id = 1",
        vec![],
    ))
    .await?;
    txn.execute(statement(
        backend,
        "UPDATE api_keys SET change_seq = (SELECT seq FROM key_changes WHERE id = 1) WHERE id = ?",
        vec![key_id.into()],
    ))
    .await?;
    Ok(())
}

/// The last value the change sequence handed out.
async fn current_seq(db: &DatabaseConnection) -> Result<i64, BillingError> {
    let row = db
        .query_one(statement(
            db.get_database_backend(),
            "SELECT seq FROM key_changes WHERE id = 1",
            vec![],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("key_changes".to_owned()))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Polls `api_keys` for changes numbered above the last one seen and evicts those keys from a
/// [`KeyCache`].
#[derive(Debug)]
pub struct KeyRefresher {
    /// The highest `change_seq` seen.
    last_seen: i64,
}

impl KeyRefresher {
    /// A refresher that reports changes made from now on (after the sequence's current value).
    pub async fn start(db: &DatabaseConnection) -> Result<Self, BillingError> {
        Ok(Self {
            last_seen: current_seq(db).await?,
        })
    }

    /// One poll; returns how many keys changed since the last one.
    pub async fn poll(
        &mut self,
        db: &DatabaseConnection,
        cache: &KeyCache,
    ) -> Result<usize, BillingError> {
        let rows: Vec<(String, i64)> = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::Id)
            .column(api_key::Column::ChangeSeq)
            .filter(api_key::Column::ChangeSeq.gt(self.last_seen))
            .order_by_asc(api_key::Column::ChangeSeq)
            .into_tuple()
            .all(db)
            .await?;
        let Some(newest) = rows.last().map(|(_, seq)| *seq) else {
            return Ok(0);
        };
        let changed: HashMap<String, i64> = rows.into_iter().collect();
        cache.evict_changed(&changed);
        self.last_seen = newest;
        Ok(changed.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::config::Tiers;
    use crate::keys::{create_key, revoke_key};

    #[tokio::test]
    async fn refresher_evicts_changed_keys_only() {
        use crate::config::TierConfig;
        let (_dir, db) = crate::db::scratch_sqlite().await;
        let tiers = Tiers::new(vec![TierConfig {
            name: "basic".into(),
            rpm: 10,
            monthly_requests: 10,
            models: None,
            max_concurrent_streams: None,
        }])
        .unwrap();
        let mut refresher = KeyRefresher::start(&db).await.unwrap();
        let cache = KeyCache::new();
        let (a, a_secret) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let (_, b_secret) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let a1 = cache
            .authenticate(&db, &tiers, a_secret.expose_secret())
            .await
            .unwrap();
        let b1 = cache
            .authenticate(&db, &tiers, b_secret.expose_secret())
            .await
            .unwrap();
        assert_eq!(refresher.poll(&db, &cache).await.unwrap(), 2);
        assert_eq!(refresher.poll(&db, &cache).await.unwrap(), 0);
        // Unchanged keys stay cached (their limiter state with them).
        let a2 = cache
            .authenticate(&db, &tiers, a_secret.expose_secret())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));

        revoke_key(&db, &a.id).await.unwrap();
        assert_eq!(refresher.poll(&db, &cache).await.unwrap(), 1);
        assert!(matches!(
            cache
                .authenticate(&db, &tiers, a_secret.expose_secret())
                .await,
            Err(BillingError::RevokedKey)
        ));
        let b2 = cache
            .authenticate(&db, &tiers, b_secret.expose_secret())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&b1, &b2));
        assert_eq!(cache.len(), 2);
        cache.invalidate(&a.id);
        assert_eq!(cache.len(), 1);
    }
}
