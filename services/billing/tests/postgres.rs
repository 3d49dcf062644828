//! The same schema and service on PostgreSQL. Runs only when `TOLLGATE_TEST_POSTGRES_URL` names a
//! database to use (e.g. `postgres://tollgate@localhost/billing_test`); it is skipped otherwise.
//! Everything it writes is scoped to keys it creates, so the database may be reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use tollgate::v1::{AdmitRequest, GetUsageRequest, Outcome, SettleRequest, Usage};
use tollgate_billing::{create_key, list_keys, revoke_key};
use tonic::Code;

use support::{Setup, eventually, tier, with_key};

/// Ignored by default so a run without a server reports it as not run rather than passed:
/// `TOLLGATE_TEST_POSTGRES_URL=postgres://... cargo test -p tollgate-billing --test postgres -- --ignored`.
#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn billing_works_on_postgres() {
    // Migrating an up-to-date schema again is a no-op.
    tollgate_billing::migrate(&support::postgres().await)
        .await
        .unwrap();
    let h = Setup::new(vec![tier("basic", 100, 2)])
        .refresh(Duration::from_millis(50))
        .postgres()
        .await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", Some("pg"))
        .await
        .unwrap();
    assert!(list_keys(&h.db).await.unwrap().contains(&record));
    let mut client = h.client.clone();

    let run = uuid::Uuid::now_v7();
    for i in 0..3 {
        let request_id = format!("chatcmpl-{run}-{i}");
        let admitted = client
            .admit(with_key(
                AdmitRequest {
                    request_id: request_id.clone(),
                    model: "deepseek-v4-flash".into(),
                    model_id: "deepseek-v4-flash".into(),
                    ..Default::default()
                },
                secret.expose_secret(),
            ))
            .await;
        if i == 2 {
            assert_eq!(admitted.unwrap_err().code(), Code::ResourceExhausted);
            continue;
        }
        admitted.unwrap();
        let req = SettleRequest {
            request_id,
            key_id: record.id.clone(),
            model_id: "deepseek-v4-flash".into(),
            usage: Some(Usage {
                prompt_tokens: 161,
                cached_prompt_tokens: 128,
                completion_tokens: 25,
                ..Default::default()
            }),
            outcome: Outcome::Succeeded as i32,
            ..Default::default()
        };
        // Settled twice: one row.
        for _ in 0..2 {
            let s = client.settle(req.clone()).await.unwrap().into_inner();
            assert_eq!(s.cost_picodollars, 18_900_000);
        }
    }
    let report = client
        .get_usage(with_key(GetUsageRequest::default(), secret.expose_secret()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.monthly_requests, 2);
    assert_eq!(report.total_prompt_tokens, 322);
    assert_eq!(report.total_cached_prompt_tokens, 256);
    assert_eq!(report.total_cost_picodollars, 37_800_000);

    revoke_key(&h.db, &record.display_prefix()).await.unwrap();
    let refused = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        let secret = secret.expose_secret().to_owned();
        async move {
            client
                .get_usage(with_key(GetUsageRequest::default(), &secret))
                .await
                .is_err_and(|s| s.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(refused);
    h.stop().await;
}

/// `[database] durability` reaches every pooled PostgreSQL session: `power_loss` leaves the
/// server's `synchronous_commit` (on), `process_crash` turns it off.
#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn durability_sets_synchronous_commit_on_postgres() {
    use sea_orm::{ConnectionTrait, Statement};
    use tollgate_billing::{DatabaseConfig, Durability};

    let url = std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap();
    for (durability, expected) in [
        (Durability::PowerLoss, "on"),
        (Durability::ProcessCrash, "off"),
    ] {
        let db = tollgate_billing::connect(&DatabaseConfig {
            durability,
            ..DatabaseConfig::at(url.clone())
        })
        .await
        .unwrap();
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                "SHOW synchronous_commit",
            ))
            .await
            .unwrap()
            .unwrap();
        let value: String = row.try_get_by_index(0).unwrap();
        assert_eq!(value, expected, "{durability:?}");
    }
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn a_late_row_of_the_previous_month_keeps_this_months_spend_on_postgres() {
    support::assert_a_late_row_keeps_the_months_spend(&support::postgres().await).await;
}

/// Replicas that start at once on a new database (a Deployment's pods, each running migrations
/// at start-up) end with one complete schema and no failed start: migrations are serialised on
/// the server.
#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn replicas_starting_together_migrate_one_schema_on_postgres() {
    use sea_orm::{ConnectionTrait, Statement};
    use sea_orm_migration::MigratorTrait;
    use tollgate_billing::DatabaseConfig;

    let url = std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap();
    let server = support::postgres().await;
    let name = format!("tollgate_migrate_{}", uuid::Uuid::now_v7().simple());
    server
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = url.split_once('?').unwrap_or((&url, ""));
    let fresh = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(
            tollgate_billing::connect(&DatabaseConfig::at(fresh.clone()))
                .await
                .unwrap(),
        );
    }
    let started = futures::future::join_all(replicas.iter().map(tollgate_billing::migrate)).await;
    for result in &started {
        assert!(result.is_ok(), "{started:?}");
    }
    let row = replicas[0]
        .query_one(Statement::from_string(
            replicas[0].get_database_backend(),
            "SELECT COUNT(*) FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap();
    let applied: i64 = row.try_get_by_index(0).unwrap();
    assert_eq!(
        applied,
        i64::try_from(tollgate_billing::Migrator::migrations().len()).unwrap()
    );
    for db in replicas {
        db.close().await.unwrap();
    }
    server
        .execute_unprepared(&format!("DROP DATABASE {name}"))
        .await
        .unwrap();
}
