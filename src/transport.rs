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
