//! Noticing key changes made by other processes (the CLI, another replica): [`KeyRefresher`]
//! polls `api_keys` and evicts changed keys from a [`KeyCache`].

use std::collections::HashMap;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use super::cache::KeyCache;
use crate::entity::api_key;
use crate::error::BillingError;

/// How far back each poll looks before the newest change it has seen, in milliseconds: covers
/// clock skew between processes and transactions that commit out of timestamp order.
const REFRESH_LOOKBACK_MS: i64 = 5_000;

/// Polls `api_keys` for rows whose `updated_at` moved and evicts them from a [`KeyCache`].
#[derive(Debug)]
pub struct KeyRefresher {
    /// The newest `updated_at` seen.
    watermark: i64,
    /// Changes already handled inside the lookback window: key id → `updated_at`.
    seen: HashMap<String, i64>,
}

impl KeyRefresher {
    /// A refresher that reports changes made from `since` (Unix ms) on.
    pub fn new(since: i64) -> Self {
        Self {
            watermark: since,
            seen: HashMap::new(),
        }
    }

    /// One poll; returns how many new changes it found.
    pub async fn poll(
        &mut self,
        db: &DatabaseConnection,
        cache: &KeyCache,
    ) -> Result<usize, BillingError> {
        let floor = self.watermark.saturating_sub(REFRESH_LOOKBACK_MS);
        let rows: Vec<(String, i64)> = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::Id)
            .column(api_key::Column::UpdatedAt)
            .filter(api_key::Column::UpdatedAt.gte(floor))
            .into_tuple()
            .all(db)
            .await?;
        let changed: HashMap<String, i64> = rows
            .into_iter()
            .filter(|(id, updated_at)| self.seen.get(id) != Some(updated_at))
            .collect();
        if !changed.is_empty() {
            cache.evict_changed(&changed);
            for (id, updated_at) in &changed {
                self.watermark = self.watermark.max(*updated_at);
                self.seen.insert(id.clone(), *updated_at);
            }
        }
        let floor = self.watermark.saturating_sub(REFRESH_LOOKBACK_MS);
        self.seen.retain(|_, updated_at| *updated_at >= floor);
        Ok(changed.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::clock::now_ms;
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
        }])
        .unwrap();
        let mut refresher = KeyRefresher::new(now_ms());
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
