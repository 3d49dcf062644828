//! The benchmark's upstream: a lean OpenAI-style chat completions server on bare hyper, the one
//! reference every path of the benchmark calls, so its cost cancels out of "added" figures.
//!
//! It parses no JSON: a request body that says `"stream": true` gets a fixed SSE stream (a role
//! chunk, five content chunks, a finish chunk, a usage chunk, `[DONE]`), any other body a fixed
//! JSON completion; both carry `usage`. A path under `/hold/` streams its first content chunk and
//! then holds the stream open until `POST /_bench/release` (or the hold cap) lets every held
//! stream finish: the idle-stream memory phase. `POST /v1/traces` takes OTLP trace exports.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

/// The path prefix whose streams are held open until released.
pub const HOLD_PREFIX: &str = "/hold/";
/// `POST` here ends every held stream.
pub const RELEASE_PATH: &str = "/_bench/release";
/// `POST` here takes an OTLP/HTTP trace export, so a gateway's `[telemetry] otlp_endpoint` can
/// be the upstream (the tracing-on variant of a run).
pub const OTLP_TRACES_PATH: &str = "/v1/traces";
/// The model name the upstream answers with.
pub const MODEL: &str = "bench-model";
/// The text of every answer, as the stream's content chunks.
pub const WORDS: [&str; 5] = ["Hello", " from", " the", " bench", " upstream."];

const CHUNK_HEAD: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1745971200,"model":"bench-model","choices":["#;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The fixed JSON completion.
pub fn json_answer() -> Bytes {
    let text: String = WORDS.concat();
    Bytes::from(format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1745971200,"model":"{MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":24,"completion_tokens":5,"total_tokens":29}}}}"#
    ))
}

/// The SSE events of one streamed answer, each `data: ...\n\n`; the first carries the role and
/// the first word, so it is where the first token arrives.
pub fn stream_events() -> Vec<Bytes> {
    let event = |choices: &str, tail: &str| {
        Bytes::from(format!("data: {CHUNK_HEAD}{choices}]{tail}}}\n\n"))
    };
    let mut events = Vec::with_capacity(WORDS.len() + 3);
    for (i, word) in WORDS.iter().enumerate() {
        let delta = if i == 0 {
            format!(r#"{{"role":"assistant","content":"{word}"}}"#)
        } else {
            format!(r#"{{"content":"{word}"}}"#)
        };
        events.push(event(
            &format!(r#"{{"index":0,"delta":{delta},"finish_reason":null}}"#),
            "",
        ));
    }
    events.push(event(
        r#"{"index":0,"delta":{},"finish_reason":"stop"}"#,
        "",
    ));
    events.push(event(
        "",
        r#","usage":{"prompt_tokens":24,"completion_tokens":5,"total_tokens":29}"#,
    ));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// Whether a JSON body asks for a stream: `"stream"`, optional blanks, `:`, optional blanks,
/// `true`. A byte scan, not a parse: the upstream must stay cheaper than anything it measures.
pub fn wants_stream(body: &[u8]) -> bool {
    let key = b"\"stream\"";
    let mut from = 0;
    while let Some(at) = find(&body[from..], key) {
        let rest = &body[from + at + key.len()..];
        let rest = skip_blanks(rest);
        if let Some(rest) = rest.strip_prefix(b":")
            && skip_blanks(rest).starts_with(b"true")
        {
            return true;
        }
        from += at + key.len();
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn skip_blanks(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    &bytes[n..]
}

/// What the running upstream shares between connections.
#[derive(Clone)]
struct Shared {
    json: Bytes,
    events: std::sync::Arc<Vec<Bytes>>,
    release: watch::Receiver<u64>,
    release_tx: std::sync::Arc<watch::Sender<u64>>,
    hold_cap: Duration,
}

/// Serves the upstream on `listener` until the task is dropped. Held streams end at the
/// latest after `hold_cap`, so nothing waits for ever.
pub async fn serve(listener: TcpListener, hold_cap: Duration) {
    let (release_tx, release) = watch::channel(0u64);
    let shared = Shared {
        json: json_answer(),
        events: std::sync::Arc::new(stream_events()),
        release,
        release_tx: std::sync::Arc::new(release_tx),
        hold_cap,
    };
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Binds `addr` and serves the upstream on a task of the current runtime.
pub async fn spawn(
    addr: SocketAddr,
    hold_cap: Duration,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(serve(listener, hold_cap))))
}

async fn answer(shared: Shared, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::POST && path == RELEASE_PATH {
        shared.release_tx.send_modify(|generation| *generation += 1);
        return Ok(plain(StatusCode::NO_CONTENT, Bytes::new(), None));
    }
    if req.method() == Method::POST && path == OTLP_TRACES_PATH {
        // An OTLP/HTTP trace export: taken and answered with an empty (valid) export response.
        let _ = req.into_body().collect().await;
        return Ok(plain(
            StatusCode::OK,
            Bytes::new(),
            Some("application/x-protobuf"),
        ));
    }
    if req.method() != Method::POST || !path.ends_with("/chat/completions") {
        return Ok(plain(StatusCode::NOT_FOUND, Bytes::new(), None));
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, Bytes::new(), None)),
    };
    if !wants_stream(&body) {
        return Ok(plain(
            StatusCode::OK,
            shared.json.clone(),
            Some("application/json"),
        ));
    }
    let events = shared.events.clone();
    let body: Body = if path.starts_with(HOLD_PREFIX) {
        let mut release = shared.release.clone();
        release.mark_unchanged();
        let hold_cap = shared.hold_cap;
        BodyExt::boxed_unsync(StreamBody::new(
            async_stream::stream! {
                yield Ok::<_, Infallible>(Frame::data(events[0].clone()));
                // Ends when released, when the upstream stops, or at the cap.
                let _ = tokio::time::timeout(hold_cap, release.changed()).await;
                for event in events[1..].iter() {
                    yield Ok(Frame::data(event.clone()));
                }
            }
            .boxed(),
        ))
    } else {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = events
            .iter()
            .map(|event| Ok(Frame::data(event.clone())))
            .collect();
        BodyExt::boxed_unsync(StreamBody::new(futures::stream::iter(frames)))
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

fn plain(status: StatusCode, body: Bytes, content_type: Option<&'static str>) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed_unsync(Full::new(body)));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_recognised_with_or_without_blanks() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"model":"m", "stream" : true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
        assert!(!wants_stream(
            br#"{"stream_options":{"include_usage":true}}"#
        ));
        assert!(wants_stream(
            br#"{"stream_options":{"include_usage":true},"stream":true}"#
        ));
    }

    #[test]
    fn answers_are_valid_json_with_usage() {
        let json: serde_json::Value = serde_json::from_slice(&json_answer()).unwrap();
        assert_eq!(json["usage"]["completion_tokens"], 5);
        assert_eq!(
            json["choices"][0]["message"]["content"],
            "Hello from the bench upstream."
        );
        let events = stream_events();
        assert_eq!(events.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        let mut text = String::new();
        for event in &events[..events.len() - 1] {
            let data = std::str::from_utf8(event).unwrap();
            let data = data.strip_prefix("data: ").unwrap().trim_end();
            let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
            if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
                text.push_str(content);
            }
        }
        assert_eq!(text, "Hello from the bench upstream.");
        let usage: serde_json::Value = serde_json::from_str(
            std::str::from_utf8(&events[events.len() - 2])
                .unwrap()
                .trim_start_matches("data: ")
                .trim_end(),
        )
        .unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 29);
    }
}
