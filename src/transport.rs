//! How one service reaches another: a gRPC client over either a network `Channel` or the other
//! service's server value called in-process (monolithic mode: same protobuf contract, no socket).
//! Both are boxed into one [`GrpcTransport`] so every client has one type whichever way it runs.

use std::convert::Infallible;

use tonic::body::Body;
use tower::{ServiceExt, util::BoxCloneSyncService};

/// A gRPC transport: `XClient::new(transport)` works for every generated client. The error is a
/// concrete type (in-process calls cannot fail at this layer), which keeps the futures of callers
/// provably `Send`.
pub type GrpcTransport =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, tonic::transport::Error>;

/// Calls a generated tonic server (e.g. `BillingServer::new(svc)`) in-process.
pub fn in_process<S>(server: S) -> GrpcTransport
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(server.map_err(|never| match never {}))
}

/// Calls a service over the network.
pub fn network(channel: tonic::transport::Channel) -> GrpcTransport {
    BoxCloneSyncService::new(channel)
}

/// How long a dial waits for a TCP connection before the call fails UNAVAILABLE.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// HTTP/2 pings on idle connections too, so a peer that vanished (kill -9, a lost node) is noticed
/// within `KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT` and the next call reconnects.
const KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A refused service address.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a service address (http://host:port): {reason}")]
pub struct DialError {
    pub url: String,
    pub reason: String,
}

/// A network transport to the service at `url` (`http://host:port`): one pooled HTTP/2
/// connection, TCP_NODELAY, keep-alive pings, connected lazily (on the first call, and again
/// after a failure), so targets can start in any order and survive a peer's restart.
pub fn dial(url: &str) -> Result<GrpcTransport, DialError> {
    let uri = dial_check(url)?;
    let endpoint = tonic::transport::Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(network(endpoint.connect_lazy()))
}

/// `url` as a service address [`dial`] accepts: `http://host:port`.
pub fn dial_check(url: &str) -> Result<http::Uri, DialError> {
    let refused = |reason: String| DialError {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| refused(format!("{e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() || uri.port().is_none() {
        return Err(refused(
            "give http://host:port (TLS between targets is the network's, e.g. a service mesh)"
                .to_owned(),
        ));
    }
    Ok(uri)
}
