//! The admin operations behind `tollgate keys`: create, list, revoke, against a SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sea_orm::{ConnectionTrait, Statement};
use tollgate_billing::keys::hash_secret;
use tollgate_billing::{BillingError, create_key, list_keys, revoke_key};

use support::{Harness, Setup, tier};

/// Two tiers, `basic` and `pro`.
async fn two_tiers() -> Harness {
    Setup::new(vec![tier("basic", 10, 1000), tier("pro", 30, 3000)])
        .sqlite()
        .await
}

#[tokio::test]
async fn create_stores_only_the_hash_and_list_shows_records() {
    let h = two_tiers().await;
    let (db, tiers) = (&h.db, &h.tiers);

    let (basic, secret) = create_key(db, tiers, "basic", Some("ci bot"))
        .await
        .unwrap();
    let (pro, _) = create_key(db, tiers, "pro", None).await.unwrap();
    assert_eq!(basic.tier, "basic");
    assert_eq!(basic.name, "ci bot");
    assert_eq!(pro.name, "");
    assert_eq!(basic.prefix, secret.prefix());
    assert_eq!(basic.prefix.len(), 12);
    assert!(secret.expose_secret().starts_with("sk-"));
    assert!(uuid::Uuid::parse_str(&basic.id).is_ok());
    assert!(!format!("{secret:?} {secret}").contains(secret.expose_secret()));

    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT secret_hash, prefix FROM api_keys WHERE id = '{}'",
                basic.id
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    let stored_hash: String = row.try_get("", "secret_hash").unwrap();
    assert_eq!(stored_hash, hash_secret(secret.expose_secret()));
    // The secret itself is nowhere in the database file.
    let path = h.db_path();
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    for file in [&bytes, &wal] {
        assert!(
            !file
                .windows(secret.expose_secret().len())
                .any(|w| w == secret.expose_secret().as_bytes())
        );
    }

    let db = h.another_connection().await;
    let listed = list_keys(&db).await.unwrap();
    assert_eq!(listed, vec![basic, pro]);
    h.stop().await;
}

#[tokio::test]
async fn unknown_tier_names_the_valid_ones() {
    let h = two_tiers().await;
    let err = create_key(&h.db, &h.tiers, "gold", None).await.unwrap_err();
    assert!(matches!(err, BillingError::UnknownTier { .. }));
    assert_eq!(
        err.to_string(),
        "unknown tier \"gold\"; configured tiers: basic, pro"
    );
    assert!(list_keys(&h.db).await.unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn revoke_by_prefix_id_or_secret() {
    let h = Harness::sqlite(tier("basic", 10, 1000)).await;
    let (db, tiers) = (&h.db, &h.tiers);
    let (a, _) = create_key(db, tiers, "basic", Some("a")).await.unwrap();
    let (b, _) = create_key(db, tiers, "basic", Some("b")).await.unwrap();
    let (c, c_secret) = create_key(db, tiers, "basic", Some("c")).await.unwrap();

    // The displayed form, with its trailing dots.
    let revoked = revoke_key(db, &a.display_prefix()).await.unwrap();
    assert_eq!(revoked.id, a.id);
    assert!(revoked.is_revoked());
    // Revoking again changes nothing.
    let again = revoke_key(db, &a.id).await.unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);

    let revoked = revoke_key(db, &b.id).await.unwrap();
    assert_eq!(revoked.id, b.id);
    let revoked = revoke_key(db, c_secret.expose_secret()).await.unwrap();
    assert_eq!(revoked.id, c.id);

    let listed = list_keys(db).await.unwrap();
    assert!(listed.iter().all(|k| k.is_revoked()));
    h.stop().await;
}

#[tokio::test]
async fn revoke_refuses_unknown_and_ambiguous_names() {
    let h = Harness::sqlite(tier("basic", 10, 1000)).await;
    let (db, tiers) = (&h.db, &h.tiers);
    let (a, _) = create_key(db, tiers, "basic", None).await.unwrap();
    let (b, _) = create_key(db, tiers, "basic", None).await.unwrap();

    for unknown in ["sk-000000000", "no-such-id", "", "sk-%", "sk-_"] {
        let err = revoke_key(db, unknown).await.unwrap_err();
        assert!(
            matches!(err, BillingError::KeyNotFound(_)),
            "{unknown}: {err:?}"
        );
        assert_eq!(
            err.to_api_error().kind,
            tollgate::error::ErrorKind::NotFound
        );
    }
    // `sk-` starts every prefix.
    match revoke_key(db, "sk-").await.unwrap_err() {
        BillingError::AmbiguousPrefix { ids, .. } => assert_eq!(ids, vec![a.id, b.id]),
        other => panic!("{other:?}"),
    }
    assert!(list_keys(db).await.unwrap().iter().all(|k| !k.is_revoked()));
    h.stop().await;
}
