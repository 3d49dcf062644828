//! The load generator's client: HTTP/1.1 keep-alive connections on hyper, one request in flight
//! per connection, each request timed from just before it is handed to the connection to its
//! first non-empty data frame (a stream's first token) and to the end of its body. An answer
//! counts as good only when it is a 200 and, for a stream, ends with `data: [DONE]`.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle, time::Instant};

use crate::Error;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Json,
    Stream,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Json => "json",
            Shape::Stream => "stream",
        }
    }
}

/// One way to reach the upstream: straight, through the proxy, or through a gateway with a key.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `direct`, `proxy`, `tollgate/unlimited`, ...
    pub name: String,
    pub addr: SocketAddr,
    pub authorization: Option<String>,
    /// Path and model of ordinary requests.
    pub path: String,
    pub model: String,
    /// Path and model of streams the upstream holds open until released.
    pub hold_path: String,
    pub hold_model: String,
}

impl Endpoint {
    /// A chat request of the given shape; `hold` asks for a held stream.
    pub fn request(&self, shape: Shape, hold: bool) -> Request<Full<Bytes>> {
        let (path, model) = if hold {
            (&self.hold_path, &self.hold_model)
        } else {
            (&self.path, &self.model)
        };
        let stream = match shape {
            Shape::Json => "",
            Shape::Stream => r#","stream":true,"stream_options":{"include_usage":true}"#,
        };
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a terse assistant."}},{{"role":"user","content":"Say hello in five words."}}],"max_tokens":64{stream}}}"#
        );
        let mut builder = Request::post(path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth.as_str());
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }
}

/// The times of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// To the first non-empty data frame of the body.
    pub first_data: Duration,
    /// To the end of the body.
    pub total: Duration,
}

/// One keep-alive connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A response whose body has started and is still open.
pub struct OpenBody {
    pub first_data: Duration,
    started: Instant,
    body: Incoming,
    tail: Vec<u8>,
    /// Answered as `text/event-stream`.
    stream: bool,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Self, Error> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    /// Sends `request` and reads its answer to the end.
    pub async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Timing, Error> {
        let open = self.start(request).await?;
        open.finish().await
    }

    /// Sends `request`, requires a 2xx answer and reads its body to the end.
    pub async fn send_ignoring_body(&mut self, request: Request<Full<Bytes>>) -> Result<(), Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if !status.is_success() {
            return Err(format!("status {status}").into());
        }
        Ok(())
    }

    /// Sends `request` and waits for the first non-empty data frame of its answer.
    pub async fn start(&mut self, request: Request<Full<Bytes>>) -> Result<OpenBody, Error> {
        self.sender.ready().await?;
        let started = Instant::now();
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let text = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&text)).into());
        }
        let mut tail = Vec::new();
        // Bounded by the body: it ends or fails.
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data()
                && !data.is_empty()
            {
                keep_tail(&mut tail, &data);
                break;
            }
        }
        Ok(OpenBody {
            first_data: started.elapsed(),
            started,
            body,
            tail,
            stream,
        })
    }
}

impl OpenBody {
    /// Reads the rest of the body and checks how it ended.
    pub async fn finish(mut self) -> Result<Timing, Error> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data() {
                keep_tail(&mut self.tail, &data);
            }
        }
        let total = self.started.elapsed();
        let text = String::from_utf8_lossy(&self.tail);
        if self.stream && !text.trim_end().ends_with("data: [DONE]") {
            return Err(format!("stream did not end with [DONE]: ...{text}").into());
        }
        Ok(Timing {
            first_data: self.first_data,
            total,
        })
    }
}

/// Keeps the last bytes seen, enough to see how a body ended.
fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    const KEEP: usize = 64;
    tail.extend_from_slice(&data[data.len().saturating_sub(KEEP)..]);
    if tail.len() > KEEP {
        tail.drain(..tail.len() - KEEP);
    }
}
