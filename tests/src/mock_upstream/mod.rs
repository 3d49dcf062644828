//! A mock upstream LLM server that speaks OpenAI Chat Completions the way OpenAI, DeepSeek,
//! MiniMax and quirky compatible servers do (DeepSeek for models named `deepseek*`, MiniMax for
//! `MiniMax*`, see `minimax.rs`, the compatible-server quirks for `compat-*`, see
//! `compatible.rs`, OpenAI for any other), deterministically: the answer
//! is `Echo: <last user text>`, tokens are whitespace-separated words, and directives in the last
//! user message (`[status=503]`, `[delay_ms=1500]`, `[cache=4]`, `[stream_error]`, `[tool]`, ...)
//! steer it, so tests can drive it through a gateway. It records every chat request it receives.
//! `[finish=REASON]` replaces the finish reason (DeepSeek's `insufficient_system_resource`);
//! `[base_resp=CODE]` makes a MiniMax model fail in-band; `[no_usage]` leaves `usage` out of a
//! non-streamed OpenAI or DeepSeek answer; `[huge_usage]` reports 2^64 - 1 completion tokens;
//! `[overrun]` answers past the completion limit (an
//! upstream billing beyond `max_tokens`); DeepSeek models honour `max_tokens` only, as DeepSeek's
//! API does (it ignores `max_completion_tokens`); the other flavour-specific directives
//! are described in their modules. OpenAI models named `o1*`, `o3*`, `o4*` or `gpt-5*` refuse
//! `max_tokens` and `stop`, as OpenAI's reasoning models do.
//!
//! Routes: `POST …/chat/completions` (any prefix), `POST …/messages` (Anthropic's Messages API,
//! `anthropic.rs`) and `POST …/messages/count_tokens` (its token count), `POST …/models/{model}:generateContent` and
//! `…:streamGenerateContent?alt=sse` (Gemini, `gemini.rs`), `GET /_mock/requests` (the recorded
//! requests as a JSON array), `DELETE /_mock/requests` (forget them), `GET /_mock/holds/{name}`
//! and `POST /_mock/holds/{name}/release` (answers held by `[hold=NAME]` until the test releases
//! them, `hold.rs`), `GET /_mock/streams/{name}` (how streams tracked by `[track=NAME]` ended:
//! finished, or closed early by the gateway and when, `track.rs`), and images for the
//! gateway's image fetcher: `GET /_mock/image.png` (a real 1x1 PNG), `GET /_mock/huge.png`
//! (2 MiB, PNG-typed), `GET /_mock/page.html` (not an image), `GET /_mock/redirect.png` (302 to
//! the PNG).
//!
//! A base URL can make every chat request to it fail, so one mock serves healthy and failing
//! deployments side by side: path segments `status=CODE` (answer that status), `retry_after=N`
//! (with `Retry-After: N`) and `fail_first=N` (only the first N requests to that path fail), e.g.
//! `http://127.0.0.1:PORT/status=429/retry_after=1/fail_first=1/v1`.

mod anthropic;
mod compatible;
mod error;
pub mod gemini;
mod hold;
mod minimax;
mod request;
mod response;
mod track;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

pub use anthropic::{AnthropicError, STREAM_ERROR_MESSAGE as ANTHROPIC_STREAM_ERROR, signature};
pub use error::MockError;
pub use hold::{HoldStatus, MAX_HOLD};
pub use request::{
    Answer, ChatPlan, Flavour, TOOL_ARGUMENT_FRAGMENTS, TOOL_CALL_ID, message_text, pieces, plan,
    word_count,
};
pub use response::{ReplyIdentity, StreamScript};
pub use track::StreamStatus;

/// How the mock is started.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// When set, every chat request must carry `Authorization: Bearer <api_key>`, else 401.
    pub api_key: Option<String>,
    /// Where to listen; `127.0.0.1:0` (a free port) when unset.
    pub addr: Option<SocketAddr>,
}

/// One chat request as the mock received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub path: String,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// The JSON body, or the raw text when it was not JSON.
    pub body: Value,
    /// Every request header (lower-case names), e.g. Anthropic's `x-api-key` and
    /// `anthropic-version`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct MockState {
    api_key: Option<String>,
    requests: Mutex<Vec<RecordedRequest>>,
    holds: hold::Holds,
    tracks: track::Tracks,
    /// Requests seen per path that carries `fail_first=N`.
    path_failures: Mutex<BTreeMap<String, u32>>,
}

impl MockState {
    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running mock. Dropping it stops the listener.
#[derive(Debug)]
pub struct MockHandle {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl MockHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL of a DeepSeek-style provider.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every chat request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests().clear();
    }

    /// How many requests arrived under `[hold=name]`, and how many wait for their release now.
    pub fn hold_status(&self, name: &str) -> HoldStatus {
        self.state.holds.status(name)
    }

    /// Lets every request held under `[hold=name]` answer, now and later.
    pub fn release(&self, name: &str) {
        self.state.holds.release(name);
    }

    /// How the streams tracked under `[track=name]` ended.
    pub fn stream_status(&self, name: &str) -> StreamStatus {
        self.state.tracks.status(name)
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the mock and serves it on the current tokio runtime.
pub async fn spawn(config: MockConfig) -> std::io::Result<MockHandle> {
    let addr = config
        .addr
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(MockState {
        api_key: config.api_key,
        requests: Mutex::default(),
        path_failures: Mutex::default(),
        holds: hold::Holds::default(),
        tracks: track::Tracks::default(),
    });
    let app = router(Arc::clone(&state));
    // Chunks are small and must leave one by one: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!("set_nodelay failed: {err}");
        }
    });
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!("mock upstream stopped: {err}");
        }
    });
    Ok(MockHandle { addr, state, task })
}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/_mock/requests", get(list_requests).delete(clear_requests))
        .route("/_mock/holds/{name}", get(hold::status))
        .route("/_mock/holds/{name}/release", post(hold::release))
        .route("/_mock/streams/{name}", get(track::status))
        .route("/_mock/image.png", get(image_png))
        .route("/_mock/huge.png", get(huge_png))
        .route("/_mock/page.html", get(page_html))
        .route("/_mock/redirect.png", get(redirect_png))
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(state)
}

async fn list_requests(State(state): State<Arc<MockState>>) -> Json<Vec<RecordedRequest>> {
    Json(state.requests().clone())
}

async fn clear_requests(State(state): State<Arc<MockState>>) -> StatusCode {
    state.requests().clear();
    StatusCode::NO_CONTENT
}

/// Size of `GET /_mock/huge.png`.
pub const HUGE_PNG_BYTES: usize = 2 * 1024 * 1024;

async fn image_png() -> Response {
    ([(header::CONTENT_TYPE, "image/png")], gemini::png()).into_response()
}

async fn huge_png() -> Response {
    (
        [(header::CONTENT_TYPE, "image/png")],
        gemini::huge_png(HUGE_PNG_BYTES),
    )
        .into_response()
}

async fn page_html() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><body>not an image</body></html>",
    )
        .into_response()
}

async fn redirect_png() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/_mock/image.png")]).into_response()
}

async fn dispatch(
    State(state): State<Arc<MockState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if method == Method::POST && path.ends_with("/chat/completions") {
        chat_completions(&state, &uri, &headers, &body).await
    } else if method == Method::POST && path.ends_with("/messages/count_tokens") {
        record(&state, &uri, &headers, &body);
        anthropic::count_tokens(state.api_key.as_deref(), &headers, &body).await
    } else if method == Method::POST && uri.path().ends_with("/messages") {
        record(&state, &uri, &headers, &body);
        anthropic::messages(state.api_key.as_deref(), &headers, &body).await
    } else if method == Method::POST
        && path.contains("/models/")
        && (path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent"))
    {
        generate_content(&state, &uri, &headers, &body).await
    } else {
        MockError {
            status: StatusCode::NOT_FOUND,
            message: format!("Invalid URL ({method} {})", uri.path()),
            kind: "invalid_request_error",
            param: None,
            code: None,
            base_resp: None,
        }
        .into_response()
    }
}

async fn chat_completions(
    state: &Arc<MockState>,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let authorization = record(state, uri, headers, body);
    let parsed: Result<Value, _> = serde_json::from_slice(body);

    let given_key = authorization
        .as_deref()
        .map(|a| a.strip_prefix("Bearer ").unwrap_or(a))
        .unwrap_or("");
    if let Some(expected) = &state.api_key
        && given_key != expected
    {
        return MockError::incorrect_api_key(given_key).into_response();
    }
    if let Some(failure) = path_failure(state, uri.path()) {
        return failure;
    }
    let Ok(body) = parsed else {
        return MockError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        )
        .into_response();
    };
    let plan = match request::plan(&body) {
        Ok(plan) => plan,
        Err(err) => return err.into_response(),
    };
    if let Some(name) = hold::name_in(&body, hold::BEFORE_ANSWER)
        && !state.holds.wait(&name).await
    {
        return hold::never_released(&name).into_response();
    }

    if !plan.stream {
        tokio::time::sleep(plan.delay).await;
        if let Some(status) = plan.status {
            return MockError::directed(status, given_key).into_response();
        }
        if let Some(code) = plan.base_resp {
            return MockError::minimax(code, base_resp_message(code)).into_response();
        }
        let ident = ReplyIdentity::new(plan.flavour);
        return Json(response::completion(&plan, &ident)).into_response();
    }
    if let Some(status) = plan.status {
        tokio::time::sleep(plan.delay).await;
        return MockError::directed(status, given_key).into_response();
    }
    if let Some(code) = plan.base_resp {
        let body = MockError::minimax(code, base_resp_message(code)).body();
        return sse_body(plan.delay, vec![sse_event(&body.to_string())]);
    }
    let mid_hold = hold::name_in(&body, hold::AFTER_FIRST_CHUNK).map(|name| MidHold {
        at: hold::position_in(&body),
        state: Arc::clone(state),
        name,
    });
    let tracked = hold::name_in(&body, track::DIRECTIVE)
        .map(|name| track::Tracked::open(Arc::clone(state), name));
    sse_response(plan, mid_hold, tracked)
}

/// The failure a base URL's path segments ask for (`status=`, `retry_after=`, `fail_first=`).
fn path_failure(state: &MockState, path: &str) -> Option<Response> {
    let value = |name: &str| {
        path.split('/')
            .find_map(|segment| segment.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let status = StatusCode::from_u16(u16::try_from(value("status")?).ok()?).ok()?;
    if let Some(first) = value("fail_first") {
        let mut seen = state
            .path_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = seen.entry(path.to_owned()).or_default();
        *count += 1;
        if u64::from(*count) > first {
            return None;
        }
    }
    let mut response = MockError::directed(status, "").into_response();
    if let Some(seconds) = value("retry_after") {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    Some(response)
}

/// Records one request; returns its `Authorization` header.
fn record(state: &MockState, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Option<String> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.requests().push(RecordedRequest {
        // With the query, so Gemini's `alt=sse` is visible.
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        authorization: authorization.clone(),
        body: serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
    });
    authorization
}

/// Gemini's `generateContent` / `streamGenerateContent`: the key in `x-goog-api-key`, the
/// request recorded with its query (`alt=sse`).
async fn generate_content(
    state: &MockState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    record(state, uri, headers, body);
    let given_key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(expected) = &state.api_key
        && given_key != expected
    {
        return gemini::GoogleError::api_key_invalid().into_response();
    }
    let Ok(body) = parsed else {
        return gemini::GoogleError {
            code: 400,
            message: "Invalid JSON payload received.".to_owned(),
            details: None,
        }
        .into_response();
    };
    let stream = uri.path().ends_with(":streamGenerateContent");
    if stream
        && !uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"))
    {
        return gemini::GoogleError {
            code: 400,
            message: "mock: streamGenerateContent is only served with alt=sse".to_owned(),
            details: None,
        }
        .into_response();
    }
    gemini::respond(&body, stream).await
}

/// MiniMax's `status_msg` for the codes of its error-code page.
fn base_resp_message(code: u64) -> &'static str {
    match code {
        1000 => "unknown error",
        1001 => "request timeout",
        1002 => "rate limit exceeded",
        1004 => "not authorized, token not match group",
        1008 => "insufficient balance",
        1024 => "internal error",
        2013 => "invalid params",
        _ => "error",
    }
}

/// A `text/event-stream` of fixed events, the first after `delay`.
fn sse_body(delay: std::time::Duration, events: Vec<Bytes>) -> Response {
    let stream = async_stream::stream! {
        tokio::time::sleep(delay).await;
        for event in events {
            yield Ok::<Bytes, Infallible>(event);
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Where a stream holds mid-way (`[hold_after_first=NAME]`, at `[hold_at=N]`).
struct MidHold {
    /// The index of the first chunk held back (1 unless `[hold_at=N]`).
    at: usize,
    state: Arc<MockState>,
    name: String,
}

/// A raw `text/event-stream` body written chunk by chunk as `data: <json>\n\n`. The headers
/// go out at once; `[delay_ms]` holds back the first event; `mid_hold` (`[hold_after_first=NAME]`)
/// holds the rest after the first chunk (or the first N, `[hold_at=N]`) until the test releases
/// NAME; `tracked` (`[track=NAME]`) records whether the stream was written to its end.
fn sse_response(
    plan: ChatPlan,
    mid_hold: Option<MidHold>,
    tracked: Option<track::Tracked>,
) -> Response {
    let ident = ReplyIdentity::new(plan.flavour);
    let script = response::stream(&plan, &ident);
    let events = async_stream::stream! {
        // Moved in, so that dropping the body (the gateway closed the connection) drops it.
        let mut tracked = tracked;
        tokio::time::sleep(plan.delay).await;
        if script.keep_alive_comments {
            yield Ok::<Bytes, Infallible>(Bytes::from_static(b": keep-alive\n\n"));
        }
        for (i, chunk) in script.chunks.iter().enumerate() {
            if let Some(MidHold { at, state, name }) = &mid_hold
                && i == *at
                && !state.holds.wait(name).await
            {
                yield Ok(sse_event(&hold::never_released(name).body().to_string()));
                if let Some(tracked) = tracked.take() {
                    tracked.finish();
                }
                return;
            }
            if i > 0 && !plan.chunk_delay.is_zero() {
                tokio::time::sleep(plan.chunk_delay).await;
            }
            if script.fail_at == Some(i) {
                yield Ok::<Bytes, Infallible>(sse_event(&script.fail_body.to_string()));
                if let Some(tracked) = tracked.take() {
                    tracked.finish();
                }
                return;
            }
            yield Ok(sse_event(&chunk.to_string()));
            if script.keep_alive_comments {
                yield Ok(Bytes::from_static(b"\n"));
            }
        }
        if script.done {
            yield Ok(sse_event("[DONE]"));
        }
        if let Some(tracked) = tracked.take() {
            tracked.finish();
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

fn sse_event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}
