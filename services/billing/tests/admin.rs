//! The Admin service (and the key features it administers: rotation, revocation, expiry, limit
//! overrides, tier allow-lists) through generated gRPC clients over a real tonic server on
//! 127.0.0.1:0, backed by a SQLite file in a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use tollgate::transport::in_process;
use tollgate::v1::admin_client::AdminClient;
use tollgate::v1::admin_server::AdminServer;
use tollgate::v1::metering_server::MeteringServer;
use tollgate::v1::{
    AdmitRequest, AuthenticateRequest, CreateKeyRequest, IssuedKey, ListKeysRequest, ManagedKey,
    Outcome, Pricing, RevokeKeyRequest, RotateKeyRequest, SettleRequest, TopUpRequest,
    UpdateKeyRequest, Usage,
};
use tollgate_billing::{AdminService, create_key};
use tonic::Code;

use support::{ADMIN_TOKEN, Harness, Setup, error_code, tier, with_key};

fn as_admin<T>(message: T) -> tonic::Request<T> {
    with_key(message, ADMIN_TOKEN)
}

fn admit(request_id: &str, model: &str, model_id: &str) -> AdmitRequest {
    AdmitRequest {
        request_id: request_id.to_owned(),
        model: model.to_owned(),
        model_id: model_id.to_owned(),
        ..Default::default()
    }
}

async fn create(h: &Harness, request: CreateKeyRequest) -> (ManagedKey, String) {
    let IssuedKey { key, secret } = h
        .client
        .admin
        .clone()
        .create_key(as_admin(request))
        .await
        .unwrap()
        .into_inner();
    (key.unwrap(), secret)
}

async fn authenticate(h: &Harness, secret: &str) -> Result<(), tonic::Status> {
    h.client
        .clone()
        .authenticate(with_key(AuthenticateRequest {}, secret))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn admin_calls_need_the_admin_token_not_an_api_key() {
    let h = Harness::sqlite(tier("basic", 10, 100)).await;
    let (_, api_key) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut admin = h.client.admin.clone();

    let missing = admin
        .list_keys(tonic::Request::new(ListKeysRequest {}))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(error_code(&missing).as_deref(), Some("invalid_admin_token"));
    for wrong in [api_key.expose_secret(), "test-admin-token-012345678", ""] {
        let mut request = tonic::Request::new(ListKeysRequest {});
        tollgate::auth::set_api_key(request.metadata_mut(), wrong);
        let err = admin.list_keys(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{wrong:?}");
    }
    let listed = admin
        .list_keys(as_admin(ListKeysRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1);

    // With no admin token configured, even the right token is refused.
    let disabled = AdminService::new(
        h.db.clone(),
        h.tiers.clone(),
        None,
        in_process(MeteringServer::new(h.service.clone())),
    );
    let mut disabled = AdminClient::new(in_process(AdminServer::new(disabled)));
    let err = disabled
        .list_keys(as_admin(ListKeysRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_code(&err).as_deref(), Some("admin_disabled"));
    h.stop().await;
}

#[tokio::test]
async fn created_keys_carry_their_overrides_and_list_without_secrets() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    let (key, secret) = create(
        &h,
        CreateKeyRequest {
            tier: "pro".into(),
            name: "ci".into(),
            expires_at: Some(expires_at),
            rpm: Some(2),
            monthly_requests: Some(50),
            ..Default::default()
        },
    )
    .await;
    assert!(secret.starts_with(&key.prefix), "{secret} {key:?}");
    assert_eq!(
        (key.rpm_override, key.monthly_requests_override),
        (Some(2), Some(50))
    );
    assert_eq!((key.rpm_limit, key.monthly_limit), (2, 50));
    assert_eq!(key.expires_at, Some(expires_at));
    assert_eq!(key.status, "active");
    authenticate(&h, &secret).await.unwrap();

    let listed = h
        .client
        .admin
        .clone()
        .list_keys(as_admin(ListKeysRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys, vec![key]);
    assert!(!format!("{listed:?}").contains(&secret));

    let mut admin = h.client.admin.clone();
    let bad = |tier: &str, expires_at: Option<i64>, rpm: Option<u32>| CreateKeyRequest {
        tier: tier.into(),
        expires_at,
        rpm,
        ..Default::default()
    };
    let err = admin
        .create_key(as_admin(bad("pro", Some(1), None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        tollgate::error::ApiError::from_status(&err)
            .param
            .as_deref(),
        Some("expires_at")
    );
    let err = admin
        .create_key(as_admin(bad("pro", None, Some(0))))
        .await
        .unwrap_err();
    assert_eq!(
        tollgate::error::ApiError::from_status(&err)
            .param
            .as_deref(),
        Some("rpm")
    );
    let err = admin
        .create_key(as_admin(bad("gold", None, None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn rotation_refuses_the_old_secret_at_once_and_keeps_the_usage() {
    let h = Harness::sqlite(tier("basic", 10, 100)).await;
    let (key, old) = create(
        &h,
        CreateKeyRequest {
            tier: "basic".into(),
            ..Default::default()
        },
    )
    .await;
    let mut client = h.client.clone();
    client
        .admit(with_key(
            admit("chatcmpl-r1", "deepseek-v4-flash", "deepseek-v4-flash"),
            &old,
        ))
        .await
        .unwrap();
    client
        .settle(SettleRequest {
            request_id: "chatcmpl-r1".into(),
            key_id: key.id.clone(),
            model_id: "deepseek-v4-flash".into(),
            usage: Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 10,
                total_tokens: 110,
                ..Default::default()
            }),
            outcome: Outcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    // The old secret is cached (no refresh poll runs in this test).
    assert_eq!(h.usage(&old).await.monthly_requests, 1);

    let IssuedKey {
        key: rotated,
        secret: new,
    } = h
        .client
        .admin
        .clone()
        .rotate_key(as_admin(RotateKeyRequest {
            key: key.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let rotated = rotated.unwrap();
    assert_ne!(new, old);
    assert_eq!(rotated.id, key.id);
    assert!(new.starts_with(&rotated.prefix));

    let err = authenticate(&h, &old).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let report = h.usage(&new).await;
    assert_eq!(report.monthly_requests, 1);
    assert_eq!(report.total_prompt_tokens, 100);
    assert_eq!(report.total_cost_picodollars, 100 * 220_000 + 10 * 440_000);

    // Revoked keys cannot be rotated back to life; revocation is immediate too.
    let revoked = h
        .client
        .admin
        .clone()
        .revoke_key(as_admin(RevokeKeyRequest {
            key: key.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, "revoked");
    assert_eq!(
        authenticate(&h, &new).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let err = h
        .client
        .admin
        .clone()
        .rotate_key(as_admin(RotateKeyRequest { key: key.id }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn updates_apply_at_once_overrides_expiry_and_tier() {
    let h = Setup::new(vec![tier("pro", 30, 3000), tier("basic", 10, 100)])
        .sqlite()
        .await;
    let (key, secret) = create(
        &h,
        CreateKeyRequest {
            tier: "pro".into(),
            ..Default::default()
        },
    )
    .await;
    let mut client = h.client.clone();
    let mut admin = h.client.admin.clone();
    let update = |f: fn(&mut UpdateKeyRequest)| {
        let mut request = UpdateKeyRequest {
            key: key.prefix.clone(),
            ..Default::default()
        };
        f(&mut request);
        as_admin(request)
    };

    let updated = admin
        .update_key(update(|r| r.rpm = Some(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.rpm_override, updated.rpm_limit), (Some(2), 2));
    for i in 0..2 {
        let id = format!("chatcmpl-u{i}");
        client
            .admit(with_key(
                admit(&id, "deepseek-v4-flash", "deepseek-v4-flash"),
                &secret,
            ))
            .await
            .unwrap();
    }
    let err = client
        .admit(with_key(
            admit("chatcmpl-u2", "deepseek-v4-flash", "deepseek-v4-flash"),
            &secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&err).as_deref(), Some("rate_limit_exceeded"));
    assert!(err.message().contains("2 requests per minute"), "{err:?}");

    let updated = admin
        .update_key(update(|r| {
            r.clear_rpm = true;
            r.monthly_requests = Some(7);
            r.tier = Some("basic".into());
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.rpm_override, None);
    assert_eq!(
        (
            updated.tier.as_str(),
            updated.rpm_limit,
            updated.monthly_limit
        ),
        ("basic", 10, 7)
    );
    let report = h.usage(&secret).await;
    assert_eq!(
        (report.tier.as_str(), report.rpm_limit, report.monthly_limit),
        ("basic", 10, 7)
    );

    let err = admin
        .update_key(update(|r| {
            r.rpm = Some(3);
            r.clear_rpm = true;
        }))
        .await
        .unwrap_err();
    assert_eq!(
        tollgate::error::ApiError::from_status(&err)
            .param
            .as_deref(),
        Some("clear_rpm")
    );

    let past = chrono::Utc::now().timestamp() - 60;
    let updated = admin
        .update_key(as_admin(UpdateKeyRequest {
            key: key.id.clone(),
            expires_at: Some(past),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.status, "expired");
    let err = authenticate(&h, &secret).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_code(&err).as_deref(), Some("expired_api_key"));
    assert!(err.message().starts_with("API key expired at "), "{err:?}");

    admin
        .update_key(update(|r| r.clear_expires_at = true))
        .await
        .unwrap();
    authenticate(&h, &secret).await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn keys_expire_by_the_clock_while_cached() {
    let h = Harness::sqlite(tier("basic", 10, 100)).await;
    let (_, secret) = create(
        &h,
        CreateKeyRequest {
            tier: "basic".into(),
            // Whole seconds: at least 2 s ahead, so the first call below is surely in time.
            expires_at: Some(chrono::Utc::now().timestamp() + 3),
            ..Default::default()
        },
    )
    .await;
    authenticate(&h, &secret).await.unwrap();
    let expired = support::eventually(Duration::from_secs(8), || {
        let h = &h;
        let secret = secret.clone();
        async move {
            authenticate(h, &secret)
                .await
                .is_err_and(|e| error_code(&e).as_deref() == Some("expired_api_key"))
        }
    })
    .await;
    assert!(expired, "the cached key never expired");
    h.stop().await;
}

#[tokio::test]
async fn tier_allow_lists_refuse_other_models_before_counting() {
    let mut flash = tier("flash", 1, 100);
    flash.models = Some(vec!["deepseek-v4-flash".into(), "gpt-4o".into()]);
    let h = Harness::sqlite(flash).await;
    let (_, secret) = create_key(&h.db, &h.tiers, "flash", None).await.unwrap();
    let secret = secret.expose_secret();
    let mut client = h.client.clone();

    for (model, model_id) in [
        ("deepseek-v4-pro", "deepseek-v4-pro"),
        ("deepseek-reasoner", "deepseek-v4-pro"),
    ] {
        let err = client
            .admit(with_key(admit("chatcmpl-x", model, model_id), secret))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{model}");
        let api = tollgate::error::ApiError::from_status(&err);
        assert_eq!(api.kind.openai_type(), "permission_error");
        assert_eq!(api.param.as_deref(), Some("model"));
        assert!(api.message.contains(model), "{api:?}");
    }
    // Nothing was counted: the one request this minute allows still goes through, via an alias
    // of an allowed model.
    assert_eq!(h.usage(secret).await.monthly_requests, 0);
    client
        .admit(with_key(
            admit("chatcmpl-ok", "deepseek-chat", "deepseek-v4-flash"),
            secret,
        ))
        .await
        .unwrap();
    h.stop().await;
}

/// Catalogue prices of the money test's model `one-usd`: 1 USD per 1M tokens in and out, so one token costs 1,000,000
/// picodollars and a worst case of 10 + 10 tokens costs 0.00002 USD.
const ONE_USD_PER_MTOK: Pricing = Pricing {
    input_micros_per_mtok: 1_000_000,
    cached_input_micros_per_mtok: 1_000_000,
    output_micros_per_mtok: 1_000_000,
    cache_write_micros_per_mtok: 1_000_000,
};

fn admit_reserving(request_id: &str) -> AdmitRequest {
    AdmitRequest {
        max_prompt_tokens: 10,
        max_completion_tokens: 10,
        reservation_ttl_ms: 60_000,
        ..admit(request_id, "one-usd", "one-usd")
    }
}

#[tokio::test]
async fn admin_gives_keys_money_tops_them_up_and_sets_budgets() {
    let h = Setup::new(vec![tier("pro", 1000, 1000)])
        .model("one-usd", ONE_USD_PER_MTOK)
        .sqlite()
        .await;
    // Exact decimal strings: 0.00003 USD covers one worst case (0.00002), not two.
    let (key, secret) = create(
        &h,
        CreateKeyRequest {
            tier: "pro".into(),
            balance_usd: Some("0.00003".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(key.balance_usd.as_deref(), Some("0.00003"));
    assert_eq!(key.monthly_budget_usd, None);
    let mut metering = h.client.metering.clone();
    metering
        .admit(with_key(admit_reserving("r1"), &secret))
        .await
        .unwrap();
    let refused = metering
        .admit(with_key(admit_reserving("r2"), &secret))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&refused).as_deref(), Some("insufficient_quota"));

    let topped = h
        .client
        .admin
        .clone()
        .top_up(as_admin(TopUpRequest {
            key: key.id.clone(),
            amount_usd: "0.00002".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topped.balance_usd.as_deref(), Some("0.00005"));
    assert_eq!(topped.reserved_usd, "0.00002");
    metering
        .admit(with_key(admit_reserving("r3"), &secret))
        .await
        .unwrap();

    // Amounts are decimal strings checked to the picodollar; nothing is changed by a bad one.
    for (amount, param) in [
        ("-1", "amount_usd"),
        ("0.0000000000001", "amount_usd"),
        ("0", "amount_usd"),
    ] {
        let err = h
            .client
            .admin
            .clone()
            .top_up(as_admin(TopUpRequest {
                key: key.id.clone(),
                amount_usd: amount.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{amount}");
        assert_eq!(
            support::error_param(&err).as_deref(),
            Some(param),
            "{amount}"
        );
    }

    let budgeted = h
        .client
        .admin
        .clone()
        .update_key(as_admin(UpdateKeyRequest {
            key: key.id.clone(),
            monthly_budget_usd: Some("1.5".into()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(budgeted.monthly_budget_usd.as_deref(), Some("1.5"));
    assert_eq!(budgeted.balance_usd.as_deref(), Some("0.00005"));
    let cleared = h
        .client
        .admin
        .clone()
        .update_key(as_admin(UpdateKeyRequest {
            key: key.id.clone(),
            clear_monthly_budget: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.monthly_budget_usd, None);
    // Top-ups need the admin token like every other Admin call.
    let err = h
        .client
        .admin
        .clone()
        .top_up(with_key(
            TopUpRequest {
                key: key.id.clone(),
                amount_usd: "1".into(),
            },
            &secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Money given to a revoked key could never be spent: refused, by the CLI's path too.
    tollgate_billing::revoke_key(&h.db, &key.id).await.unwrap();
    let err = h
        .client
        .admin
        .clone()
        .top_up(as_admin(TopUpRequest {
            key: key.id.clone(),
            amount_usd: "1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(support::error_param(&err).as_deref(), Some("key"));
    let refused = tollgate_billing::keys::top_up_key(&h.db, &key.id, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            tollgate_billing::BillingError::InvalidArgument { param: "key", .. }
        ),
        "{refused:?}"
    );
    h.stop().await;
}
