//! How one service reaches another: a gRPC client over either a network `Channel` or the other
//! service's server value called in-process (monolithic mode: same protobuf contract, no socket).
//! Both are boxed into one [`GrpcTransport`] so every client has one type whichever way it runs.

use std::convert::Infallible;

use http_body_util::BodyExt;
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

/// How often the replicas of a dialled service are re-resolved and re-probed when nothing asks
/// sooner (`[services] resolve_interval_secs` overrides it).
pub const DEFAULT_RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A network transport to the service at `url` (`http://host:port`), balanced over every address
/// its host resolves to: see [`dial_replicas`].
pub fn dial(url: &str) -> Result<GrpcTransport, DialError> {
    dial_replicas(&[url.to_owned()], DEFAULT_RESOLVE_INTERVAL)
}

/// A network transport to the replicas of one service: the addresses every URL in `urls`
/// (`http://host:port`) resolves to, re-resolved every `resolve_interval` (the `replicas`
/// module). Each call goes to one replica picked by tower's power-of-two-choices
/// balancer; per replica one pooled HTTP/2 connection, TCP_NODELAY, keep-alive pings, connected
/// lazily (on the first call, and again after a failure), so targets can start in any order and
/// survive a peer's restart. A call that fails at the transport level makes the set refresh at
/// once, so a dead replica leaves it; such a call answers UNAVAILABLE. Every call carries the
/// caller's trace context (`trace_context`). Needs a tokio runtime.
pub fn dial_replicas(
    urls: &[String],
    resolve_interval: std::time::Duration,
) -> Result<GrpcTransport, DialError> {
    let services = urls
        .iter()
        .map(|url| dial_check(url))
        .collect::<Result<Vec<_>, _>>()?;
    if services.is_empty() {
        return Err(DialError {
            url: String::new(),
            reason: "give at least one http://host:port".to_owned(),
        });
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(DialError {
            url: urls.join(", "),
            reason: "dialling needs a tokio runtime".to_owned(),
        });
    }
    let (channel, refresh) =
        crate::replicas::balanced(services, resolve_interval, replica_endpoint);
    let transport = BoxCloneSyncService::new(channel.map_result(
        move |answer: Result<http::Response<Body>, tonic::transport::Error>| match answer {
            Ok(response) => Ok(response.map(|body| Body::new(body.map_err(lost_mid_call)))),
            Err(error) => {
                refresh.notify_one();
                Ok(lost_call(&error))
            }
        },
    ));
    Ok(crate::trace_context::propagate(transport))
}

/// The answer to a call whose connection failed before its response began (refused, reset, the
/// replica killed mid-call): UNAVAILABLE, as gRPC defines a transient failure, rather than the
/// UNKNOWN tonic would report for a broken connection, so callers see a retryable 503 and
/// idempotent calls are retried.
fn lost_call(error: &tonic::transport::Error) -> http::Response<Body> {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason = format!("{reason}: {cause}");
        source = cause.source();
    }
    tonic::Status::unavailable(format!("the service was unreachable: {reason}")).into_http()
}

/// A response body that broke after the response began (the replica killed mid-stream, its
/// connection reset): UNAVAILABLE too. A server's own error travels in the trailers, never as a
/// body error, so every error here is the transport's, which tonic would report as INTERNAL or
/// UNKNOWN; a caller must see the same retryable failure whether the connection broke before or
/// during the answer.
fn lost_mid_call(status: tonic::Status) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "the service was lost mid-call: {}",
        status.message()
    ))
}

/// The connection settings of one replica.
fn replica_endpoint(uri: http::Uri) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
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

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use tokio::net::TcpListener;
    use tonic_health::{
        ServingStatus,
        pb::{HealthCheckRequest, health_check_response, health_client::HealthClient},
    };

    use super::*;

    /// A gRPC server on `listener` whose health answers `status` for service "who", so a caller
    /// can tell the replicas apart; it stops when the sender is dropped.
    async fn replica(
        listener: TcpListener,
        status: ServingStatus,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status("who", status).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        (stop, task)
    }

    async fn who(client: &mut HealthClient<GrpcTransport>) -> Result<i32, tonic::Status> {
        let answer = client
            .check(HealthCheckRequest {
                service: "who".to_owned(),
            })
            .await?;
        Ok(answer.into_inner().status)
    }

    const A: i32 = health_check_response::ServingStatus::Serving as i32;
    const B: i32 = health_check_response::ServingStatus::NotServing as i32;

    /// Calls until `want` answers `in_a_row` times in a row, within `limit`; the calls made.
    async fn until_only(
        client: &mut HealthClient<GrpcTransport>,
        want: i32,
        in_a_row: usize,
        limit: Duration,
    ) -> usize {
        let start = tokio::time::Instant::now();
        let (mut calls, mut streak) = (0, 0);
        while streak < in_a_row {
            assert!(
                start.elapsed() < limit,
                "{want} did not answer alone within {limit:?}"
            );
            calls += 1;
            match who(client).await {
                Ok(status) if status == want => streak += 1,
                _ => streak = 0,
            }
        }
        calls
    }

    #[tokio::test]
    async fn calls_spread_over_replicas_and_skip_a_dead_one() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, b_addr): (SocketAddr, SocketAddr) =
            (a.local_addr().unwrap(), b.local_addr().unwrap());
        let (stop_a, a_task) = replica(a, ServingStatus::Serving).await;
        let (_stop_b, _b_task) = replica(b, ServingStatus::NotServing).await;
        let transport = dial_replicas(
            &[format!("http://{a_addr}"), format!("http://{b_addr}")],
            Duration::from_millis(200),
        )
        .unwrap();
        let mut client = HealthClient::new(transport);

        // Per call, not per connection: both replicas answer one client.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(who(&mut client).await.unwrap());
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(seen, [A, B].into_iter().collect());

        // A stops: the calls go on at B alone, soon without a single failure.
        drop(stop_a);
        a_task.await.unwrap();
        until_only(&mut client, B, 50, Duration::from_secs(5)).await;

        // A comes back on its address: it rejoins within a resolve interval.
        let a = TcpListener::bind(a_addr).await.unwrap();
        let (_stop_a, _a_task) = replica(a, ServingStatus::Serving).await;
        until_only(&mut client, A, 1, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_name_stands_for_its_addresses_and_every_replica_down_fails_fast() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, task) = replica(listener, ServingStatus::Serving).await;
        // "localhost" resolves (to 127.0.0.1 at least): its replica answers.
        let transport = dial(&format!("http://localhost:{port}")).unwrap();
        let mut client = HealthClient::new(transport);
        assert_eq!(who(&mut client).await.unwrap(), A);

        // No replica left: calls fail at once rather than wait for one to appear.
        drop(stop);
        task.await.unwrap();
        for _ in 0..3 {
            let failed = tokio::time::timeout(Duration::from_secs(10), who(&mut client))
                .await
                .expect("a call with no live replica must fail, not hang");
            assert_eq!(failed.unwrap_err().code(), tonic::Code::Unavailable);
        }
    }

    #[tokio::test]
    async fn a_connection_lost_mid_call_answers_unavailable() {
        // A "replica" that accepts, reads the start of the call, and drops the connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dropper = tokio::spawn(async move {
            for _ in 0..3 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut start = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut start).await;
            }
        });
        let mut client = HealthClient::new(dial(&format!("http://{addr}")).unwrap());
        let lost = tokio::time::timeout(Duration::from_secs(10), who(&mut client))
            .await
            .expect("a lost connection must end the call")
            .unwrap_err();
        assert_eq!(lost.code(), tonic::Code::Unavailable, "{lost:?}");
        dropper.abort();
    }

    #[tokio::test]
    async fn a_stream_broken_mid_answer_ends_unavailable() {
        // A replica killed while it streams: the caller reaches it through a TCP relay whose
        // sockets are dropped at once, as a kill -9 would close them, with the stream open.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let (_stop, _server) = replica(listener, ServingStatus::Serving).await;
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Every connection (the balancer's probes too) in a set that dies with this task.
            let mut relays = tokio::task::JoinSet::new();
            loop {
                let (mut caller, _) = front.accept().await.unwrap();
                relays.spawn(async move {
                    let mut replica = tokio::net::TcpStream::connect(server).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut caller, &mut replica).await;
                });
            }
        });
        let mut client = HealthClient::new(dial(&format!("http://{addr}")).unwrap());
        let mut watch = client
            .watch(HealthCheckRequest {
                service: "who".to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(watch.message().await.unwrap().unwrap().status, A);
        task.abort();
        let broken = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a broken stream must end")
            .unwrap_err();
        assert_eq!(broken.code(), tonic::Code::Unavailable, "{broken:?}");
        assert!(broken.message().contains("lost mid-call"), "{broken:?}");
    }

    #[test]
    fn dialling_checks_every_url_and_needs_a_runtime() {
        let e = dial_replicas(
            &["http://a:1".to_owned(), "b:2".to_owned()],
            DEFAULT_RESOLVE_INTERVAL,
        )
        .err()
        .unwrap();
        assert_eq!(e.url, "b:2");
        assert!(dial_replicas(&[], DEFAULT_RESOLVE_INTERVAL).is_err());
        let e = dial("http://a:1").err().unwrap();
        assert!(e.reason.contains("tokio runtime"), "{e}");
    }
}
