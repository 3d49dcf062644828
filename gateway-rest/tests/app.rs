//! The REST facade at the service depth: `app()` over the monolith's services wired in-process
//! (SQLite in a temporary directory, the mock upstream on port 0), called with
//! `tower::ServiceExt::oneshot`. No listener and no binary: what the Python suite checks over
//! HTTP, checked here in-process for the facade's own concerns (body parsing, keys, routes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tollgate_e2e::mock_upstream::{self, MockConfig, MockHandle};
use tollgate_gateway::{Config, app, server::Services};
use tower::ServiceExt;

const UPSTREAM_KEY: &str = "sk-upstream-test-key";
const ADMIN_TOKEN: &str = "admin-token-for-the-app-test";

/// One assembled facade and what it runs on. Dropping it removes the database.
struct Gateway {
    app: Router,
    services: Services,
    mock: MockHandle,
    _dir: TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let mock = mock_upstream::spawn(MockConfig {
            api_key: Some(UPSTREAM_KEY.to_owned()),
            addr: None,
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
[database]
url = "sqlite://{db}"

[admin]
token_env = "TEST_ADMIN_TOKEN"

[[providers]]
name = "deepseek"
kind = "deepseek"
base_url = "{mock}"
api_key_env = "TEST_UPSTREAM_KEY"

[[models]]
id = "deepseek-v4-flash"
provider = "deepseek"
upstream_model = "deepseek-v4-flash"
owned_by = "deepseek"
context_length = 1000000
max_output_tokens = 384000
input_price = 0.22
cached_input_price = 0.005
output_price = 0.44
thinking = "optional"

[[aliases]]
id = "deepseek-chat"
target = "deepseek-v4-flash"
thinking = false

[[tiers]]
name = "basic"
rpm = 100
monthly_requests = 1000
"#,
            db = dir.path().join("tollgate.db").display(),
            mock = mock.base_url(),
        );
        let runtime = Config::from_toml(&config, []).unwrap().validate().unwrap();
        let env = |name: &str| match name {
            "TEST_UPSTREAM_KEY" => Some(UPSTREAM_KEY.to_owned()),
            "TEST_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_owned()),
            _ => None,
        };
        let services = Services::start(&runtime, &env).await.unwrap();
        let app = app(services.app_state(&runtime.server));
        Self {
            app,
            services,
            mock,
            _dir: dir,
        }
    }

    /// One request through the router; the status and the JSON body.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    /// A new API key of tier `basic`, issued through `POST /admin/keys`.
    async fn api_key(&self) -> String {
        let (status, issued) = self
            .call(
                Method::POST,
                "/admin/keys",
                Some(&format!("Bearer {ADMIN_TOKEN}")),
                Some(&json!({"tier": "basic", "name": "app test"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        issued["secret"].as_str().unwrap().to_owned()
    }

    async fn chat(&self, authorization: Option<&str>, body: &Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/chat/completions",
            authorization,
            Some(body),
        )
        .await
    }

    async fn stop(self) {
        self.services.billing.shutdown().await;
    }
}

/// The OpenAI error object of an error response, after checking its status and type.
fn openai_error(status: StatusCode, body: &Value, expected: StatusCode, kind: &str) -> Value {
    assert_eq!(status, expected, "{body}");
    let error = body["error"].clone();
    assert_eq!(error["type"], kind, "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    error
}

#[tokio::test]
async fn a_chat_completion_is_answered_and_billed() {
    let gateway = Gateway::start().await;
    let key = gateway.api_key().await;
    let (status, body) = gateway
        .chat(
            Some(&format!("Bearer {key}")),
            &json!({
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": "hello from oneshot"}],
                "max_tokens": 50,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "deepseek-chat");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Echo: hello from oneshot"
    );
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert!(body["usage"]["cost"].is_number(), "{body}");

    let requests = gateway.mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["model"], "deepseek-v4-flash");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );

    // The request is in the key's usage, read with the same key.
    let (status, usage) = gateway
        .call(
            Method::GET,
            "/v1/dashboard/billing/usage",
            Some(&format!("Bearer {key}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["total_requests"], 1, "{usage}");
    gateway.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400_naming_the_field() {
    let gateway = Gateway::start().await;
    let key = gateway.api_key().await;
    let auth = format!("Bearer {key}");
    let cases = [
        (
            json!({"model": "deepseek-chat", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "deepseek-chat", "messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!([{"model": "deepseek-chat"}]), "body"),
    ];
    for (body, param) in cases {
        let (status, answer) = gateway.chat(Some(&auth), &body).await;
        let error = openai_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        );
        assert_eq!(error["param"], param, "{body}: {answer}");
    }
    // Not JSON at all.
    let request = Request::post("/v1/chat/completions")
        .header(header::AUTHORIZATION, &auth)
        .body(Body::from(r#"{"model": "deepseek-chat", "messages": ["#))
        .unwrap();
    let response = gateway.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        gateway.mock.requests().is_empty(),
        "a bad body reached the upstream"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_call_without_a_key_is_401_before_the_body_is_read() {
    let gateway = Gateway::start().await;
    let valid = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]});
    for authorization in [None, Some("Basic Zm9vOmJhcg=="), Some("Bearer ")] {
        let (status, body) = gateway.chat(authorization, &valid).await;
        let error = openai_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        );
        assert_eq!(error["code"], "missing_api_key", "{authorization:?}");
        assert_eq!(
            error["message"],
            "Missing API key: send Authorization: Bearer sk-... (or x-api-key: sk-...)"
        );
    }
    // The key is checked before the body: a bad body without a key is still a 401.
    let (status, body) = gateway.chat(None, &json!({"model": 5})).await;
    openai_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
    );
    // A key Billing does not know is Billing's 401.
    let (status, body) = gateway.chat(Some("Bearer sk-not-a-key"), &valid).await;
    let error = openai_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
    );
    assert_eq!(error["code"], "invalid_api_key");
    // The usage routes need a key too.
    let (status, body) = gateway
        .call(
            Method::GET,
            "/v1/dashboard/billing/subscription",
            None,
            None,
        )
        .await;
    openai_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
    );
    assert!(gateway.mock.requests().is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn models_are_listed_without_a_key() {
    let gateway = Gateway::start().await;
    let (status, body) = gateway.call(Method::GET, "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["deepseek-v4-flash", "deepseek-chat"]);
    let alias = &body["data"][1];
    assert_eq!(alias["alias_of"], "deepseek-v4-flash");
    assert_eq!(body["data"][0]["pricing"]["input"], json!(0.22));
    gateway.stop().await;
}

#[tokio::test]
async fn the_messages_api_takes_x_api_key_or_bearer_and_answers_errors_in_anthropics_shape() {
    let gateway = Gateway::start().await;
    let key = gateway.api_key().await;
    let body = json!({"model": "deepseek-chat", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hello"}]});
    let messages = |headers: Vec<(&'static str, String)>, body: String| {
        let mut request = Request::post("/v1/messages");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let app = gateway.app.clone();
        async move {
            let response = app
                .oneshot(request.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    for headers in [
        vec![("x-api-key", key.clone())],
        vec![("authorization", format!("Bearer {key}"))],
    ] {
        let (status, answer) = messages(headers, body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["type"], "message");
    }
    let anthropic_error = |status: StatusCode, answer: &Value, expected, kind: &str| {
        assert_eq!(status, expected, "{answer}");
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["error"]["type"], kind, "{answer}");
    };
    // No key (or an empty one): 401 before the body is looked at.
    for headers in [vec![], vec![("x-api-key", " ".to_owned())]] {
        let (status, answer) = messages(headers, "{".into()).await;
        anthropic_error(
            status,
            &answer,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        );
    }
    let (status, answer) =
        messages(vec![("x-api-key", "sk-not-a-key".into())], body.to_string()).await;
    anthropic_error(
        status,
        &answer,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
    );
    // A body that is not JSON, and one without max_tokens: 400 naming the field.
    for (bad, field) in [
        ("{", "body"),
        (
            r#"{"model": "deepseek-chat", "messages": []}"#,
            "max_tokens",
        ),
    ] {
        let (status, answer) = messages(vec![("x-api-key", key.clone())], bad.into()).await;
        anthropic_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{message}");
    }
    assert_eq!(gateway.mock.requests().len(), 2);
    gateway.stop().await;
}
