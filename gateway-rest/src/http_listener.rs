//! How the REST listener serves its connections: hyper's HTTP/1 and HTTP/2 with the bounds a
//! public listener needs. A connection must send its first request's headers within the
//! header-read timeout, and an idle HTTP/1 keep-alive connection its next request's (silent and
//! slow connections, "slowloris", are closed); connections over `max_connections` are closed as
//! soon as they are accepted; an HTTP/2 connection carries at most `max_concurrent_streams`
//! streams and must answer keep-alive pings. A shutdown stops accepting and lets the open
//! connections finish the requests they carry.

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
    let builder = Arc::new(builder);
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
            builder.clone(),
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
    builder: Arc<Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    held: Held,
    mut stop: watch::Receiver<bool>,
) {
    // hyper times the headers of HTTP/1 requests itself, but not the bytes before them (its
    // HTTP/1-or-2 detection, or an HTTP/2 preface): the first request must begin within the
    // timeout, whatever the protocol.
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
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service));
    let mut conn = pin!(conn);
    let mut first_deadline = pin!(tokio::time::sleep(header_read_timeout));
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
