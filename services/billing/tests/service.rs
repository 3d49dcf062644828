//! The Billing service through its generated gRPC client over a real tonic server on
//! 127.0.0.1:0, backed by a SQLite file in a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sea_orm::{EntityTrait, PaginatorTrait};
use tollgate::v1::{
    AdmitRequest, AuthenticateRequest, InvalidateKeyRequest, Outcome, SettleRequest, Usage,
};
use tollgate_billing::entity::usage_ledger;
use tollgate_billing::{create_key, revoke_key};
use tonic::Code;

use support::{Harness, Setup, error_code, error_param, eventually, tier, with_key};

const DEADLINE: Duration = Duration::from_secs(10);

fn admit(request_id: &str) -> AdmitRequest {
    AdmitRequest {
        request_id: request_id.to_owned(),
        model: "deepseek-v4-flash".to_owned(),
        model_id: "deepseek-v4-flash".to_owned(),
        ..Default::default()
    }
}

fn settle(request_id: &str, key_id: &str, usage: Usage) -> SettleRequest {
    SettleRequest {
        request_id: request_id.to_owned(),
        key_id: key_id.to_owned(),
        requested_model: "deepseek-chat".to_owned(),
        model_id: "deepseek-v4-flash".to_owned(),
        provider: "deepseek".to_owned(),
        upstream_model: "deepseek-v4-flash".to_owned(),
        usage: Some(usage),
        outcome: Outcome::Succeeded as i32,
        streamed: true,
        estimated: false,
        deployment: String::new(),
        attempts: 0,
    }
}

fn usage(prompt: u64, cached: u64, completion: u64, reasoning: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        cached_prompt_tokens: cached,
        completion_tokens: completion,
        reasoning_tokens: reasoning,
        total_tokens: prompt + completion,
        ..Default::default()
    }
}

#[tokio::test]
async fn authenticate_accepts_known_keys_and_refuses_others() {
    let h = Harness::sqlite(tier("basic", 10, 1000)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", Some("ci"))
        .await
        .unwrap();
    let mut client = h.client.clone();

    for _ in 0..2 {
        // Miss, then hit.
        let info = client
            .authenticate(with_key(AuthenticateRequest {}, secret.expose_secret()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.key_id, record.id);
        assert_eq!(info.key_prefix, format!("{}...", secret.prefix()));
        assert_eq!(info.tier, "basic");
        assert_eq!(info.name, "ci");
    }

    let status = client
        .authenticate(tonic::Request::new(AuthenticateRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "Missing API key: send Authorization: Bearer sk-..."
    );

    let unknown = format!("sk-{}", "x".repeat(48));
    for bad in [unknown.as_str(), "sk-short", "not-a-key"] {
        let status = client
            .authenticate(with_key(AuthenticateRequest {}, bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}");
        assert_eq!(status.message(), "Invalid API key provided");
        assert_eq!(error_code(&status).as_deref(), Some("invalid_api_key"));
    }
    h.stop().await;
}

#[tokio::test]
async fn revoked_key_is_refused_right_after_invalidate_key() {
    let h = Harness::sqlite(tier("basic", 10, 1000)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();
    client
        .authenticate(with_key(AuthenticateRequest {}, secret.expose_secret()))
        .await
        .unwrap();

    revoke_key(&h.db, &record.id).await.unwrap();
    client
        .invalidate_key(InvalidateKeyRequest {
            key_id: record.id.clone(),
        })
        .await
        .unwrap();

    let status = client
        .admit(with_key(admit("chatcmpl-1"), secret.expose_secret()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "API key has been revoked");
    assert_eq!(error_code(&status).as_deref(), Some("invalid_api_key"));

    // Invalidating an unknown id is fine too.
    client
        .invalidate_key(InvalidateKeyRequest {
            key_id: "nope".into(),
        })
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn revocation_by_another_process_is_noticed_by_the_refresh_task() {
    let h = Setup::new(vec![tier("basic", 10, 1000)])
        .refresh(Duration::from_millis(50))
        .sqlite()
        .await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();
    client
        .authenticate(with_key(AuthenticateRequest {}, secret.expose_secret()))
        .await
        .unwrap();

    // The CLI: its own connection, no RPC to the service.
    let cli_db = h.another_connection().await;
    revoke_key(&cli_db, &record.prefix).await.unwrap();

    let refused = eventually(DEADLINE, || {
        let mut client = client.clone();
        let secret = secret.expose_secret().to_owned();
        async move {
            match client
                .authenticate(with_key(AuthenticateRequest {}, &secret))
                .await
            {
                Ok(_) => false,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated);
                    assert_eq!(status.message(), "API key has been revoked");
                    true
                }
            }
        }
    })
    .await;
    assert!(
        refused,
        "the revoked key was still accepted after {DEADLINE:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn rpm_limit_refuses_the_fourth_request_of_the_minute() {
    let h = Harness::sqlite(tier("basic", 3, 1000)).await;
    let (_, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();
    for i in 0..3 {
        let admission = client
            .admit(with_key(admit(&format!("r{i}")), secret.expose_secret()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(admission.request_id, format!("r{i}"));
        assert_eq!(admission.key.unwrap().tier, "basic");
    }
    let status = client
        .admit(with_key(admit("r3"), secret.expose_secret()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&status).as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(
        status.message(),
        "Rate limit reached: tier basic allows 3 requests per minute"
    );

    // The refused request did not use quota.
    let report = h.usage(secret.expose_secret()).await;
    assert_eq!(report.monthly_requests, 3);
    assert_eq!(report.remaining, 997);
    assert_eq!(report.rpm_limit, 3);
    h.stop().await;
}

#[tokio::test]
async fn monthly_quota_admits_exactly_the_limit_under_concurrency() {
    let h = Harness::sqlite(tier("basic", 10_000, 5)).await;
    let (_, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();

    // Cold cache: the concurrent fills must also agree on one counter.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut client = h.client.clone();
            let secret = secret.expose_secret().to_owned();
            tokio::spawn(async move {
                client
                    .admit(with_key(admit(&format!("r{i}")), &secret))
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(
                    error_code(&status).as_deref(),
                    Some("monthly_quota_exceeded")
                );
                assert_eq!(
                    status.message(),
                    "Monthly quota reached: tier basic allows 5 requests per month"
                );
            }
        }
    }
    assert_eq!(admitted, 5);
    let report = h.usage(secret.expose_secret()).await;
    assert_eq!((report.monthly_requests, report.remaining), (5, 0));
    h.stop().await;
}

#[tokio::test]
async fn quota_counter_is_restored_from_the_ledger_after_a_restart() {
    let h = Harness::sqlite(tier("basic", 100, 10)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();
    for i in 0..3 {
        let id = format!("chatcmpl-{i}");
        client
            .admit(with_key(admit(&id), secret.expose_secret()))
            .await
            .unwrap();
        client
            .settle(settle(&id, &record.id, usage(10, 0, 5, 0)))
            .await
            .unwrap();
    }
    let h = h.restart().await;
    let report = h.usage(secret.expose_secret()).await;
    assert_eq!(report.monthly_requests, 3);
    assert_eq!(report.monthly_limit, 10);
    assert_eq!(report.remaining, 7);
    assert_eq!(report.total_prompt_tokens, 30);
    h.stop().await;
}

#[tokio::test]
async fn settle_is_idempotent_by_request_id() {
    let h = Harness::sqlite(tier("basic", 100, 100)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();
    client
        .admit(with_key(admit("chatcmpl-dup"), secret.expose_secret()))
        .await
        .unwrap();
    let first = client
        .settle(settle("chatcmpl-dup", &record.id, usage(1000, 0, 100, 0)))
        .await
        .unwrap()
        .into_inner();
    // A retry with other numbers still answers with the first row's cost.
    let second = client
        .settle(settle("chatcmpl-dup", &record.id, usage(5000, 0, 900, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.cost_picodollars, 1000 * 220_000 + 100 * 440_000);
    assert_eq!(second, first);

    assert_eq!(usage_ledger::Entity::find().count(&h.db).await.unwrap(), 1);
    let report = h.usage(secret.expose_secret()).await;
    assert_eq!(report.total_prompt_tokens, 1000);
    assert_eq!(report.total_completion_tokens, 100);
    assert_eq!(report.total_cost_picodollars, first.cost_picodollars);
    assert_eq!(report.monthly_requests, 1);
    h.stop().await;
}

#[tokio::test]
async fn costs_are_exact_and_sum_to_the_reported_total() {
    let h = Harness::sqlite(tier("pro", 100, 100)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "pro", None).await.unwrap();
    let mut client = h.client.clone();
    let usages = [
        usage(161, 128, 25, 0),
        usage(1, 0, 1, 0),
        usage(12_345, 12_000, 6_789, 4_000),
        usage(0, 0, 0, 0),
    ];
    let mut sum = 0i64;
    for (i, u) in usages.iter().enumerate() {
        let settlement = client
            .settle(settle(&format!("r{i}"), &record.id, *u))
            .await
            .unwrap()
            .into_inner();
        sum += settlement.cost_picodollars;
        if i == 0 {
            // Cached prompt tokens at the cache-hit price: 33 * 0.22 + 128 * 0.005 + 25 * 0.44
            // USD per 1M tokens = 0.0000189 USD.
            assert_eq!(settlement.cost_picodollars, 18_900_000);
        }
    }
    // A settle without usage costs nothing.
    let mut no_usage = settle("r-none", &record.id, Usage::default());
    no_usage.usage = None;
    assert_eq!(
        client
            .settle(no_usage)
            .await
            .unwrap()
            .into_inner()
            .cost_picodollars,
        0
    );

    let report = h.usage(secret.expose_secret()).await;
    assert_eq!(report.total_cost_picodollars, sum);
    assert_eq!(report.total_prompt_tokens, 161 + 1 + 12_345);
    assert_eq!(report.total_cached_prompt_tokens, 128 + 12_000);
    assert_eq!(report.total_completion_tokens, 25 + 1 + 6_789);
    assert_eq!(report.total_reasoning_tokens, 4_000);
    assert_eq!(report.tier, "pro");
    assert_eq!(report.key_prefix, format!("{}...", record.prefix));
    let period = chrono::Utc::now().format("%Y-%m-01T00:00:00Z").to_string();
    assert_eq!(report.period_start, period);
    h.stop().await;
}

#[tokio::test]
async fn concurrent_settles_are_all_durable() {
    let h = Harness::sqlite(tier("basic", 100, 100)).await;
    let (record, _) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let mut client = h.client.clone();
            let req = settle(&format!("r{i}"), &record.id, usage(i, 0, 1, 0));
            tokio::spawn(async move { client.settle(req).await })
        })
        .collect();
    let mut expected = 0;
    for call in calls {
        expected += call.await.unwrap().unwrap().into_inner().cost_picodollars;
    }
    // Every Settle has returned, so every row is committed: a fresh connection sees them all.
    let fresh = h.another_connection().await;
    assert_eq!(
        usage_ledger::Entity::find().count(&fresh).await.unwrap(),
        300
    );
    let rows = usage_ledger::Entity::find().all(&fresh).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.cost_picodollars).sum::<i64>(),
        expected
    );
    assert!(
        rows.iter()
            .all(|r| r.period.len() == 7 && r.outcome == "succeeded")
    );
    h.stop().await;
}

#[tokio::test]
async fn settle_and_admit_validate_their_input() {
    let h = Harness::sqlite(tier("basic", 100, 100)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();
    let status = client
        .settle(settle("", &record.id, usage(1, 0, 1, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .settle(settle("r1", "", usage(1, 0, 1, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        tollgate::error::ApiError::from_status(&status)
            .param
            .as_deref(),
        Some("key_id")
    );
    let status = client
        .admit(with_key(admit(""), secret.expose_secret()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(usage_ledger::Entity::find().count(&h.db).await.unwrap(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_key_whose_tier_left_the_config_is_refused() {
    let h = Harness::sqlite(tier("legacy", 10, 10)).await;
    let (_, secret) = create_key(&h.db, &h.tiers, "legacy", None).await.unwrap();
    let h = h
        .restart_with(Setup::new(vec![tier("basic", 10, 10)]))
        .await;
    let status = h
        .client
        .clone()
        .admit(with_key(admit("r1"), secret.expose_secret()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_code(&status).as_deref(), Some("tier_not_configured"));
    h.stop().await;
}

#[tokio::test]
async fn settle_after_shutdown_is_unavailable() {
    let h = Harness::sqlite(tier("basic", 100, 100)).await;
    h.service.shutdown().await;
    let status = h
        .client
        .clone()
        .settle(settle("r1", "k", usage(1, 0, 1, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    h.stop().await;
}

#[tokio::test]
async fn prices_come_from_the_catalogue_and_unknown_models_are_refused() {
    let h = Harness::sqlite(tier("basic", 100, 100)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let mut client = h.client.clone();

    // Neither an unknown id nor an alias is a catalogue model: refused, naming the field, before
    // any limit counts the request and without a ledger row.
    for model_id in ["no-such-model", "", support::ALIAS] {
        let mut request = admit(&format!("r-{model_id}"));
        request.model_id = model_id.to_owned();
        let status = client
            .admit(with_key(request, secret.expose_secret()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{model_id:?}");
        assert_eq!(error_param(&status).as_deref(), Some("model_id"));

        let mut request = settle(&format!("r-{model_id}"), &record.id, usage(1, 0, 1, 0));
        request.model_id = model_id.to_owned();
        let status = client.settle(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{model_id:?}");
        assert_eq!(error_param(&status).as_deref(), Some("model_id"));
        assert!(
            status.message().contains("catalogue"),
            "{}",
            status.message()
        );
    }
    assert_eq!(h.usage(secret.expose_secret()).await.monthly_requests, 0);
    assert_eq!(usage_ledger::Entity::find().count(&h.db).await.unwrap(), 0);

    // The same usage costs what each model's catalogue prices say.
    let mut pro = settle("r-pro", &record.id, usage(1000, 0, 100, 0));
    pro.model_id = "deepseek-v4-pro".into();
    let pro = client.settle(pro).await.unwrap().into_inner();
    assert_eq!(pro.cost_picodollars, 1000 * 550_000 + 100 * 2_190_000);
    let flash = client
        .settle(settle("r-flash", &record.id, usage(1000, 0, 100, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flash.cost_picodollars, 1000 * 220_000 + 100 * 440_000);
    h.stop().await;
}

#[tokio::test]
async fn the_key_check_in_process_spares_admit_a_lookup_but_not_a_revocation() {
    use tollgate::{
        auth::AuthenticatedKey,
        v1::{CheckKeyRequest, billing_server::Billing, metering_server::Metering},
    };
    let h = Harness::sqlite(tier("basic", 10, 1000)).await;
    let (record, secret) = create_key(&h.db, &h.tiers, "basic", None).await.unwrap();
    let secret = secret.expose_secret();

    // Over the network the check leaves no proof: extensions never travel.
    let remote = h
        .client
        .billing
        .clone()
        .check_key(with_key(CheckKeyRequest {}, secret))
        .await
        .unwrap();
    assert!(remote.extensions().get::<AuthenticatedKey>().is_none());

    // In-process (the monolith's direct call) it does, and Admit takes it.
    let checked = Billing::check_key(&h.service, with_key(CheckKeyRequest {}, secret))
        .await
        .unwrap();
    let proof = checked
        .extensions()
        .get::<AuthenticatedKey>()
        .cloned()
        .expect("an in-process key check leaves its proof");
    let with_proof = |request_id: &str| {
        let mut call = with_key(admit(request_id), secret);
        call.extensions_mut().insert(proof.clone());
        call
    };
    let admitted = Metering::admit(&h.service, with_proof("r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admitted.key.unwrap().key_id, record.id);

    // A proof presented with another secret proves nothing: that key is looked up (and refused).
    let unknown = format!("sk-{}", "x".repeat(48));
    let mut call = with_key(admit("r2"), &unknown);
    call.extensions_mut().insert(proof.clone());
    let status = Metering::admit(&h.service, call).await.unwrap_err();
    assert_eq!(status.message(), "Invalid API key provided");

    // Revoked between the check and Admit: the proof no longer holds, the revocation wins.
    revoke_key(&h.db, &record.id).await.unwrap();
    Metering::invalidate_key(
        &h.service,
        tonic::Request::new(InvalidateKeyRequest {
            key_id: record.id.clone(),
        }),
    )
    .await
    .unwrap();
    let status = Metering::admit(&h.service, with_proof("r3"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "API key has been revoked");
    h.stop().await;
}
