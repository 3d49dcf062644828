//! The key-refresh poll follows the database's change sequence, not anyone's clock: a change made
//! by another process (the CLI, another replica) reaches this process's cache within the refresh
//! interval even when that writer's clock is far behind. On SQLite, and on PostgreSQL (`--ignored`,
//! run by `scripts/test.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use tollgate::v1::AuthenticateRequest;
use tollgate_billing::entity::api_key;
use tollgate_billing::keys::record_change;
use tollgate_billing::{create_key, rotate_key};
use tonic::Code;

use support::{Harness, Setup, eventually, tier, with_key};

const DEADLINE: Duration = Duration::from_secs(10);
const ONE_HOUR_MS: i64 = 3_600_000;

fn setup() -> Setup {
    Setup::new(vec![tier("basic", 100, 1000)]).refresh(Duration::from_millis(50))
}

/// Whether `secret` authenticates, and if not, the refusal's message.
async fn authenticate(h: &Harness, secret: &str) -> Result<(), String> {
    h.client
        .clone()
        .authenticate(with_key(AuthenticateRequest {}, secret))
        .await
        .map(|_| ())
        .map_err(|status| {
            assert_eq!(status.code(), Code::Unauthenticated);
            status.message().to_owned()
        })
}

async fn changes_reach_the_cache_whatever_the_writers_clock(h: &Harness) {
    let (a, a_secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let (b, b_secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let (a_secret, b_secret) = (a_secret.expose_secret(), b_secret.expose_secret());
    // Both cached by this process.
    authenticate(h, a_secret).await.unwrap();
    authenticate(h, b_secret).await.unwrap();

    // Another process whose clock is an hour behind revokes `a`: every timestamp it writes is
    // older than anything this process has seen. It numbers its change like every writer does.
    let writer = h.another_connection().await;
    let behind = chrono::Utc::now().timestamp_millis() - ONE_HOUR_MS;
    let txn = writer.begin().await.unwrap();
    api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(Some(behind)))
        .col_expr(api_key::Column::UpdatedAt, Expr::value(behind))
        .filter(api_key::Column::Id.eq(a.id.as_str()))
        .exec(&txn)
        .await
        .unwrap();
    record_change(&txn, &a.id).await.unwrap();
    txn.commit().await.unwrap();

    let revoked = eventually(DEADLINE, || async {
        authenticate(h, a_secret).await == Err("API key has been revoked".to_owned())
    })
    .await;
    assert!(revoked, "the lagging writer's revocation was never noticed");
    authenticate(h, b_secret).await.unwrap();

    // A rotation through the store by that process: the old secret stops working here too.
    let (rotated, new_secret) = rotate_key(&writer, &b.id).await.unwrap();
    assert_eq!(rotated.id, b.id);
    let refused = eventually(DEADLINE, || async {
        authenticate(h, b_secret).await == Err("Invalid API key provided".to_owned())
    })
    .await;
    assert!(refused, "the rotated secret was still accepted");
    authenticate(h, new_secret.expose_secret()).await.unwrap();
}

#[tokio::test]
async fn changes_reach_the_cache_whatever_the_writers_clock_on_sqlite() {
    let h = setup().sqlite().await;
    changes_reach_the_cache_whatever_the_writers_clock(&h).await;
    h.stop().await;
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn changes_reach_the_cache_whatever_the_writers_clock_on_postgres() {
    let h = setup().postgres().await;
    changes_reach_the_cache_whatever_the_writers_clock(&h).await;
    h.stop().await;
}
