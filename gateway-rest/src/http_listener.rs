//! How the REST listener serves its connections: hyper's HTTP/1 and HTTP/2 with the bounds a
//! public listener needs. A connection must send its first request's headers within the
//! header-read timeout, and an idle HTTP/1 keep-alive connection its next request's (silent and
//! slow connections, "slowloris", are closed); connections over `max_connections` are closed as
//! soon as they are accepted; an HTTP/2 connection carries at most `max_concurrent_streams`
//! streams and must answer keep-alive pings. A shutdown stops accepting and lets the open
//! connections finish the requests they carry.
//!
//! Which protocol a connection speaks is told from its first bytes, peeked (`MSG_PEEK`) and left
//! in the socket, so hyper's HTTP/1 reads the request straight from it. hyper-util's own
//! detection reads the first 24 bytes (the HTTP/2 preface's length) into a prefix that hyper's
//! first read returns alone: the request head then takes a second read, which doubles hyper's
//! 8 KiB read buffer to 16 KiB for the life of the connection (a held stream is one connection).
//! Only bytes that could still be the start of the preface (a client that sent fewer than 24,
//! all matching it) are left to hyper-util's detection.

use std::{future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
};
use tower::ServiceBuilder;

use crate::config::ServerConfig;

/// How often an idle HTTP/2 connection is pinged, and how long its answer may take.
pub const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The largest HTTP/2 header block a request may send (hyper's default is 16 MiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pause after a failed `accept` (typically: out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds of one listener, from `[server]`.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
}

impl ListenerLimits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            max_connections: server.max_connections,
            max_concurrent_streams: server.max_concurrent_streams,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the open connections to
/// finish their requests (the caller bounds that wait by its grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE);
    let protocols = Arc::new(Protocols {
        http1: builder.clone().http1_only(),
        http2: builder.clone().http2_only(),
        either: builder,
    });
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached; closing a new connection"
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            protocols.clone(),
            limits.header_read_timeout,
            Held {
                _permit: permit,
                _open: open_rx.clone(),
            },
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
}

/// hyper's connection settings, one per way a connection's protocol can be known.
struct Protocols {
    /// HTTP/1 only: the connection's first bytes are not the HTTP/2 preface.
    http1: Builder<TokioExecutor>,
    /// HTTP/2 only: they are the preface.
    http2: Builder<TokioExecutor>,
    /// Either, told by hyper-util from the bytes it reads: too few have come to tell.
    either: Builder<TokioExecutor>,
}

impl Protocols {
    /// The settings for a connection whose first bytes are `first`.
    fn for_first_bytes(&self, first: &[u8]) -> &Builder<TokioExecutor> {
        if first.len() >= HTTP2_PREFACE.len() {
            if first.starts_with(HTTP2_PREFACE) {
                &self.http2
            } else {
                &self.http1
            }
        } else if HTTP2_PREFACE.starts_with(first) {
            &self.either
        } else {
            &self.http1
        }
    }
}

/// What a connection holds while it is open: its place under the connection cap, and its share
/// of the listener's wait at shutdown.
struct Held {
    _permit: OwnedSemaphorePermit,
    _open: watch::Receiver<()>,
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    protocols: Arc<Protocols>,
    header_read_timeout: Duration,
    held: Held,
    mut stop: watch::Receiver<bool>,
) {
    // hyper times the headers of HTTP/1 requests itself, but not the bytes before them (the
    // protocol's detection, or an HTTP/2 preface): the first request must begin within the
    // timeout, whatever the protocol.
    let mut first_deadline = pin!(tokio::time::sleep(header_read_timeout));
    let mut first = [0; HTTP2_PREFACE.len()];
    let peeked = tokio::select! {
        peeked = tcp.peek(&mut first) => peeked,
        () = &mut first_deadline => {
            tracing::debug!("no request within the header-read timeout; closing");
            return;
        }
        _ = stop.wait_for(|stop| *stop) => return,
    };
    let builder = match peeked {
        Ok(0) => return,
        Ok(n) => protocols.for_first_bytes(&first[..n]),
        Err(e) => {
            tracing::debug!(error = %e, "connection ended before its first request");
            return;
        }
    };
    let first_request = Arc::new(Notify::new());
    let seen = first_request.clone();
    let service = ServiceBuilder::new()
        .map_request(move |request: hyper::Request<Incoming>| {
            seen.notify_one();
            let mut request = request.map(Body::new);
            // The client's address, as axum's `ConnectInfo` (the management rate limit keys on it).
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        })
        .service(app);
    // No upgrades: no route takes over its connection, and hyper-util's upgradeable connection
    // always reads the protocol itself.
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
    let mut conn = pin!(conn);
    let mut awaiting_first = true;
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = first_request.notified(), if awaiting_first => awaiting_first = false,
            () = &mut first_deadline, if awaiting_first => {
                tracing::debug!("no request within the header-read timeout; closing");
                break;
            }
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(held);
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A listener serving `GET /` and `POST /` ("ok") until the test ends.
    async fn listener() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }).post(|| async { "ok" }));
        let limits = ListenerLimits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 16,
            max_concurrent_streams: 8,
        };
        tokio::spawn(serve(listener, app, limits, std::future::pending()));
        addr
    }

    #[test]
    fn the_first_bytes_tell_the_protocol() {
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http1().keep_alive(true);
        let protocols = Protocols {
            http1: builder.clone().http1_only(),
            http2: builder.clone().http2_only(),
            either: builder,
        };
        let is = |first: &[u8], expected: &Builder<TokioExecutor>| {
            std::ptr::eq(protocols.for_first_bytes(first), expected)
        };
        assert!(is(
            b"POST /v1/chat/completions HTTP/1.1\r\n",
            &protocols.http1
        ));
        assert!(is(b"GET / HTTP/1.1\r\n", &protocols.http1));
        assert!(is(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &protocols.http2));
        assert!(is(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04",
            &protocols.http2
        ));
        // Too few bytes to tell: the preface may still come.
        assert!(is(b"P", &protocols.either));
        assert!(is(b"PRI * HTTP/2.0\r\n", &protocols.either));
        // A prefix that is not the preface's: HTTP/1 (whatever hyper then makes of it).
        assert!(is(b"PO", &protocols.http1));
        assert!(is(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", &protocols.http1));
    }

    #[tokio::test]
    async fn http1_and_http2_are_both_served() {
        let addr = listener().await;
        let url = format!("http://{addr}/");
        let http1 = reqwest::Client::new().get(&url).send().await.unwrap();
        assert_eq!(http1.version(), http::Version::HTTP_11);
        assert_eq!(http1.text().await.unwrap(), "ok");
        let http2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(http2.version(), http::Version::HTTP_2);
        assert_eq!(http2.text().await.unwrap(), "ok");
    }

    /// Bytes that might be the HTTP/2 preface's first are left to hyper-util's detection, which
    /// waits for more: both protocols are still served when a client sends its first bytes in
    /// pieces.
    #[tokio::test]
    async fn first_bytes_sent_in_pieces_are_still_told_apart() {
        let addr = listener().await;

        let mut http1 = TcpStream::connect(addr).await.unwrap();
        http1.write_all(b"P").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        http1
            .write_all(
                b"OST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = String::new();
        http1.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        let mut http2 = TcpStream::connect(addr).await.unwrap();
        http2.write_all(&HTTP2_PREFACE[..16]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        http2.write_all(&HTTP2_PREFACE[16..]).await.unwrap();
        // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
        http2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut frame = [0; 9];
        tokio::time::timeout(Duration::from_secs(5), http2.read_exact(&mut frame))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            frame[3], 4,
            "the server's first frame is its SETTINGS: {frame:?}"
        );
    }
}
