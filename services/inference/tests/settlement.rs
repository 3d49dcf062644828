//! The Inference service at the service depth: `InferenceService` driven through its generated
//! gRPC client (in-process transport, as `tollgate serve` wires it), over the real Catalog and
//! Billing services (SQLite in a temp dir) and the mock upstream on port 0. Each test reads the
//! ledger rows themselves to show that every admitted request is settled exactly once: on
//! success, on an upstream failure, and when the client drops a stream mid-way. No Python, no
//! binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::SqlitePool;
use tempfile::TempDir;
use tollgate::{
    error::ApiError,
    transport::{GrpcTransport, in_process},
    v1::{
        Admission, AdmitRequest, AuthenticateRequest, ChatChunk, ChatRequest, ChatResponse,
        CreateKeyRequest, InvalidateKeyRequest, InvalidateKeyResponse, KeyInfo, Message, Role,
        SettleRequest, Settlement, StreamOptions,
        admin_client::AdminClient,
        admin_server::AdminServer,
        catalog_server::CatalogServer,
        inference_client::InferenceClient,
        inference_server::InferenceServer,
        message::Content,
        metering_server::{Metering, MeteringServer},
    },
};
use tollgate_billing::{AdminService, AdminToken, BillingService, TierConfig, Tiers};
use tollgate_catalog::{Catalog, CatalogService, ModelConfig};
use tollgate_e2e::mock_upstream::{self, MockConfig, MockHandle};
use tollgate_inference::{
    ClientDisconnect, ClientPolicy, ImagesConfig, InferenceService, ProviderConfig, Providers,
};
use tonic::{Code, Request, Response, Status, Streaming};

const ADMIN_TOKEN: &str = "settlement-test-admin-token";
/// gpt-4.1-mini's prices in micro-USD per 1M tokens, i.e. picodollars per token.
const INPUT_PICO: i64 = 400_000;
const OUTPUT_PICO: i64 = 1_600_000;
/// The balance every key starts with, so each request also reserves money.
const BALANCE_USD: &str = "1";
const BALANCE_PICO: i64 = 1_000_000_000_000;

/// One ledger row as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    request_id: String,
    outcome: String,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_picodollars: i64,
    streamed: bool,
    estimated: bool,
}

impl Row {
    /// The row of a request settled at the mock's own count for the user message `text`.
    fn counted(request_id: String, outcome: &str, text: &str, streamed: bool) -> Self {
        let (prompt, completion) = mock_usage(text);
        Self {
            request_id,
            outcome: outcome.to_owned(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_picodollars: cost(prompt, completion),
            streamed,
            estimated: false,
        }
    }
}

/// The key's money after settlement: (reserved, balance, spent in total, open reservations).
#[derive(Debug, PartialEq, Eq)]
struct Money {
    reserved: i64,
    balance: Option<i64>,
    spent_total: i64,
    reservations: i64,
}

/// The services of `tollgate serve`, wired in-process, plus the mock and the database file.
struct Stack {
    _dir: TempDir,
    mock: MockHandle,
    inference: InferenceService,
    billing: BillingService,
    admin: AdminClient<GrpcTransport>,
    ledger: SqlitePool,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(ClientPolicy::default()).await
    }

    async fn start_with(client: ClientPolicy) -> Self {
        Self::start_full(client, |billing| in_process(MeteringServer::new(billing))).await
    }

    /// The stack with Inference calling Metering through `metering` (given Billing).
    async fn start_full(
        client: ClientPolicy,
        metering: impl FnOnce(BillingService) -> GrpcTransport,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
        let db = tollgate_billing::connect(&tollgate_billing::DatabaseConfig::at(url.clone()))
            .await
            .unwrap();
        tollgate_billing::migrate(&db).await.unwrap();
        let tiers = Tiers::new(vec![TierConfig {
            name: "pro".to_owned(),
            rpm: 100,
            monthly_requests: 1000,
            models: None,
            max_concurrent_streams: None,
        }])
        .unwrap();
        let model: ModelConfig = toml::from_str(
            r#"
            id = "gpt-4.1-mini"
            provider = "openai"
            context_length = 1047576
            max_output_tokens = 32768
            input_price = 0.40
            output_price = 1.60
            "#,
        )
        .unwrap();
        let catalog = Catalog::new(&[model], &[], &["openai"]).unwrap();
        let catalog = CatalogService::new(catalog);
        let billing = BillingService::new(
            db.clone(),
            tiers.clone(),
            in_process(CatalogServer::new(catalog.clone())),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let admin = AdminService::new(
            db,
            tiers,
            Some(AdminToken::new(ADMIN_TOKEN).unwrap()),
            in_process(MeteringServer::new(billing.clone())),
        );

        let mock = mock_upstream::spawn(MockConfig {
            api_key: Some("upstream-secret".to_owned()),
            addr: None,
        })
        .await
        .unwrap();
        let provider: ProviderConfig = toml::from_str(&format!(
            r#"
            name = "openai"
            kind = "openai"
            base_url = "{}/v1"
            api_key_env = "UPSTREAM_KEY"
            first_token_timeout_secs = 20
            request_timeout_secs = 30
            "#,
            mock.base_url()
        ))
        .unwrap();
        let env = |name: &str| (name == "UPSTREAM_KEY").then(|| "upstream-secret".to_owned());
        let providers = Providers::new(&[provider], &ImagesConfig::default(), &env).unwrap();
        let inference = InferenceService::new(
            providers,
            in_process(CatalogServer::new(catalog)),
            metering(billing.clone()),
        )
        .with_client_policy(client);
        Self {
            ledger: SqlitePool::connect(&url).await.unwrap(),
            _dir: dir,
            mock,
            inference,
            billing,
            admin: AdminClient::new(in_process(AdminServer::new(admin))),
        }
    }

    fn client(&self) -> InferenceClient<GrpcTransport> {
        InferenceClient::new(in_process(InferenceServer::new(self.inference.clone())))
    }

    /// `Inference.Chat` of one user message with the key `secret`.
    async fn chat(&self, secret: &str, text: &str) -> Result<ChatResponse, Status> {
        let request = with_key(chat(text, false), secret);
        Ok(self.client().chat(request).await?.into_inner())
    }

    /// `Inference.ChatStream` (usage chunk asked for) of one user message with the key `secret`.
    async fn stream(&self, secret: &str, text: &str) -> Result<Streaming<ChatChunk>, Status> {
        let request = with_key(chat(text, true), secret);
        Ok(self.client().chat_stream(request).await?.into_inner())
    }

    /// A new prepaid key: (key id, secret).
    async fn key(&self) -> (String, String) {
        let mut request = Request::new(CreateKeyRequest {
            tier: "pro".to_owned(),
            name: "settlement".to_owned(),
            balance_usd: Some(BALANCE_USD.to_owned()),
            ..CreateKeyRequest::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        let issued = self.admin.clone().create_key(request).await.unwrap();
        let issued = issued.into_inner();
        (issued.key.unwrap().id, issued.secret)
    }

    /// Waits (bounded) until no admitted request is left unsettled.
    async fn drained(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.inference.drained())
            .await
            .expect("every admitted request settles");
    }

    async fn rows(&self, key_id: &str) -> Vec<Row> {
        let rows: Vec<(String, String, i64, i64, i64, bool, bool)> = sqlx::query_as(
            "SELECT request_id, outcome, prompt_tokens, completion_tokens, cost_picodollars, \
             streamed, estimated FROM usage_ledger WHERE key_id = ? ORDER BY id",
        )
        .bind(key_id)
        .fetch_all(&self.ledger)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| Row {
                request_id: r.0,
                outcome: r.1,
                prompt_tokens: r.2,
                completion_tokens: r.3,
                cost_picodollars: r.4,
                streamed: r.5,
                estimated: r.6,
            })
            .collect()
    }

    async fn money(&self, key_id: &str) -> Money {
        let (reserved, balance, spent_total): (i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT reserved_picodollars, balance_picodollars, spent_total_picodollars \
             FROM key_accounts WHERE key_id = ?",
        )
        .bind(key_id)
        .fetch_one(&self.ledger)
        .await
        .unwrap();
        let (reservations,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM reservations WHERE key_id = ?")
                .bind(key_id)
                .fetch_one(&self.ledger)
                .await
                .unwrap();
        Money {
            reserved,
            balance,
            spent_total,
            reservations,
        }
    }

    /// The key's ledger is exactly `row`, and its money moved by exactly that row's cost.
    async fn assert_settled_once(&self, key_id: &str, row: Row) {
        let cost = row.cost_picodollars;
        assert_eq!(self.rows(key_id).await, vec![row]);
        self.assert_settled_money(key_id, cost).await;
    }

    /// The key's money once its only settlement cost `cost`: nothing held, the cost debited.
    async fn assert_settled_money(&self, key_id: &str, cost: i64) {
        assert_eq!(
            self.money(key_id).await,
            Money {
                reserved: 0,
                balance: Some(BALANCE_PICO - cost),
                spent_total: cost,
                reservations: 0,
            }
        );
    }
}

fn chat(text: &str, stream: bool) -> ChatRequest {
    ChatRequest {
        model: "gpt-4.1-mini".to_owned(),
        messages: vec![Message {
            role: Role::User.into(),
            content: Some(Content::Text(text.to_owned())),
            ..Message::default()
        }],
        max_tokens: Some(100),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        ..ChatRequest::default()
    }
}

fn with_key<T>(message: T, secret: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

fn words(text: &str) -> i64 {
    i64::try_from(text.split_whitespace().count()).unwrap()
}

/// (prompt, completion) tokens the mock reports for one user message: it answers `Echo: <text>`
/// and counts whitespace-separated words.
fn mock_usage(text: &str) -> (i64, i64) {
    (words(text), words(&format!("Echo: {text}")))
}

fn cost(prompt: i64, completion: i64) -> i64 {
    prompt * INPUT_PICO + completion * OUTPUT_PICO
}

#[tokio::test]
async fn a_successful_call_is_settled_once_at_the_upstreams_count() {
    let stack = Stack::start().await;
    let (key_id, secret) = stack.key().await;
    let text = "settle me once please";
    let response = stack.chat(&secret, text).await.unwrap();
    stack.drained().await;

    let (prompt, completion) = mock_usage(text);
    let usage = response.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (prompt as u64, completion as u64)
    );
    assert_eq!(usage.cost_picodollars, Some(cost(prompt, completion)));
    stack
        .assert_settled_once(&key_id, Row::counted(response.id, "succeeded", text, false))
        .await;
    assert_eq!(stack.mock.requests().len(), 1);
    stack.billing.shutdown().await;
}

/// Billing whose first answer to Admit is lost on the way back (it admitted the request, the
/// caller sees `UNAVAILABLE`), recording the `retry` flag of every Admit it is sent.
#[derive(Clone)]
struct LostFirstAdmission {
    billing: BillingService,
    retries: Arc<Mutex<Vec<bool>>>,
}

#[tonic::async_trait]
impl Metering for LostFirstAdmission {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        self.billing.authenticate(request).await
    }

    async fn admit(&self, request: Request<AdmitRequest>) -> Result<Response<Admission>, Status> {
        let first = {
            let mut retries = self.retries.lock().unwrap();
            retries.push(request.get_ref().retry);
            retries.len() == 1
        };
        let admission = self.billing.admit(request).await?;
        if first {
            return Err(Status::unavailable("connection reset"));
        }
        Ok(admission)
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<Settlement>, Status> {
        self.billing.settle(request).await
    }

    async fn invalidate_key(
        &self,
        request: Request<InvalidateKeyRequest>,
    ) -> Result<Response<InvalidateKeyResponse>, Status> {
        self.billing.invalidate_key(request).await
    }
}

#[tokio::test]
async fn a_retried_admission_says_it_is_one_and_holds_the_money_once() {
    let retries = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&retries);
    let stack = Stack::start_full(ClientPolicy::default(), move |billing| {
        in_process(MeteringServer::new(LostFirstAdmission {
            billing,
            retries: recorded,
        }))
    })
    .await;
    let (key_id, secret) = stack.key().await;
    let text = "admit me twice";
    let response = stack.chat(&secret, text).await.unwrap();
    stack.drained().await;

    assert_eq!(*retries.lock().unwrap(), vec![false, true]);
    stack
        .assert_settled_once(&key_id, Row::counted(response.id, "succeeded", text, false))
        .await;
    stack.billing.shutdown().await;
}

#[tokio::test]
async fn a_finished_stream_is_settled_once_before_its_usage_chunk() {
    let stack = Stack::start().await;
    let (key_id, secret) = stack.key().await;
    let text = "stream and settle";
    let mut stream = stack.stream(&secret, text).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(chunk);
    }
    stack.drained().await;

    let (prompt, completion) = mock_usage(text);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(
        last.usage.unwrap().cost_picodollars,
        Some(cost(prompt, completion))
    );
    stack
        .assert_settled_once(
            &key_id,
            Row::counted(last.id.clone(), "succeeded", text, true),
        )
        .await;
    stack.billing.shutdown().await;
}

#[tokio::test]
async fn an_upstream_failure_is_settled_once_at_zero() {
    let stack = Stack::start().await;
    let (key_id, secret) = stack.key().await;
    let status = stack
        .chat(&secret, "fail me [status=500]")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        ApiError::from_status(&status).kind,
        tollgate::error::ErrorKind::Upstream
    );
    // A stream that fails before its first chunk is a status too, and settled the same way.
    let status = stack
        .stream(&secret, "fail me too [status=500]")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    stack.drained().await;

    let rows = stack.rows(&key_id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_ne!(rows[0].request_id, rows[1].request_id);
    for (row, streamed) in rows.iter().zip([false, true]) {
        assert_eq!(
            row,
            &Row {
                request_id: row.request_id.clone(),
                outcome: "failed".to_owned(),
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_picodollars: 0,
                streamed,
                estimated: false,
            }
        );
    }
    stack.assert_settled_money(&key_id, 0).await;
    // A 500 is retried (on the model's only deployment, after backoff) up to the default three
    // attempts; the request still has one row, at zero.
    assert_eq!(stack.mock.requests().len(), 2 * 3);
    stack.billing.shutdown().await;
}

#[tokio::test]
async fn a_stream_failing_mid_way_is_settled_once_at_a_marked_estimate() {
    let stack = Stack::start().await;
    let (key_id, secret) = stack.key().await;
    let mut stream = stack
        .stream(&secret, "one two three [stream_error]")
        .await
        .unwrap();
    let mut content = String::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                for choice in chunk.choices {
                    content.push_str(choice.delta.unwrap().content.as_deref().unwrap_or(""));
                }
            }
            Ok(None) => panic!("the stream ended without its error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    stack.drained().await;

    let rows = stack.rows(&key_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (row.outcome.as_str(), row.streamed, row.estimated),
        ("failed", true, true)
    );
    // The estimate: ceil(bytes / 4) of the text relayed.
    assert_eq!(content, "Echo: one");
    assert_eq!(
        row.completion_tokens,
        i64::try_from(content.len().div_ceil(4)).unwrap()
    );
    assert!(row.prompt_tokens > 0);
    assert_eq!(
        row.cost_picodollars,
        cost(row.prompt_tokens, row.completion_tokens)
    );
    stack
        .assert_settled_money(&key_id, row.cost_picodollars)
        .await;
    stack.billing.shutdown().await;
}

#[tokio::test]
async fn a_stream_dropped_mid_way_in_finish_mode_is_settled_once_at_the_upstreams_final_count() {
    let stack = Stack::start_with(ClientPolicy {
        on_disconnect: ClientDisconnect::Finish,
        ..ClientPolicy::default()
    })
    .await;
    let (key_id, secret) = stack.key().await;
    let text = "leave me one two three four five [hold_after_first=gone]";
    let mut stream = stack.stream(&secret, text).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.choices.len(), 1);
    // The upstream holds the rest of its answer until released: the client leaves mid-way.
    for _ in 0..2000 {
        if stack.mock.hold_status("gone").waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stack.mock.hold_status("gone").waiting, 1);
    drop(stream);
    stack.mock.release("gone");
    stack.drained().await;

    stack
        .assert_settled_once(&key_id, Row::counted(first.id, "cancelled", text, true))
        .await;
    stack.billing.shutdown().await;
}

#[tokio::test]
async fn a_stream_dropped_mid_way_closes_the_upstream_and_is_settled_at_an_estimate() {
    let stack = Stack::start().await;
    let (key_id, secret) = stack.key().await;
    let text = "leave me one two three four five [hold_after_first=cut] [track=cut]";
    let mut stream = stack.stream(&secret, text).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    drop(stream);
    // The upstream connection closes without the held rest being released.
    for _ in 0..2000 {
        if stack.mock.stream_status("cut").closed_early == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = stack.mock.stream_status("cut");
    assert_eq!((status.closed_early, status.finished), (1, 0));
    stack.drained().await;
    let rows: Vec<(String, String, i64, bool)> = sqlx::query_as(
        "SELECT request_id, outcome, completion_tokens, estimated FROM usage_ledger WHERE key_id = ?",
    )
    .bind(&key_id)
    .fetch_all(&stack.ledger)
    .await
    .unwrap();
    // The first chunk is the role alone: nothing generated was relayed.
    assert_eq!(rows, vec![(first.id, "cancelled".to_owned(), 0, true)]);
    stack.mock.release("cut");
    stack.billing.shutdown().await;
}
