//! Which replicas of a service a network transport spreads its calls over. A service address is
//! one URL or a list of them (static replicas); a URL whose host is a DNS name stands for every
//! address the name resolves to (a Kubernetes headless Service lists one per ready pod). A
//! background task resolves the names, keeps the addresses that accept a TCP connection, and
//! feeds the set to tonic's balanced [`Channel`] (tower's power-of-two-choices balancer), so each
//! call picks a replica rather than one HTTP/2 connection pinning every call to one pod. The set
//! is refreshed every `resolve_interval`, and at once after a call fails at the transport level
//! (a replica killed or draining leaves the set within a probe, a new one joins within an
//! interval).
//!
//! When no replica accepts connections, every resolved address stays in the set (and a name that
//! does not resolve stands for itself): calls then fail fast with the connection's error instead
//! of waiting for a replica to appear.

use std::{collections::HashSet, sync::Arc, time::Duration};

use http::Uri;
use tokio::{net::TcpStream, sync::Notify, task::JoinSet};
use tonic::transport::{Channel, Endpoint, channel::Change};

/// How long a probe waits for a replica's TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest pause between two refreshes, however often failing calls ask for one.
const MIN_REFRESH_PAUSE: Duration = Duration::from_millis(100);
/// Changes queued to the balancer at once (one per replica added or removed).
const CHANGE_CAPACITY: usize = 64;

/// A replica the balancer can hold: its key (`http://addr:port`, or the URL as written when its
/// name does not resolve) and the `host:port` a probe connects to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Replica {
    key: Uri,
    origin: Uri,
    probe: (String, u16),
}

/// A balanced channel over the replicas of `services` (checked `http://host:port` URIs), and a
/// handle that asks for an early refresh. The set is kept by a task that ends once the channel
/// (every clone of it) is dropped. Needs a tokio runtime.
pub(crate) fn balanced(
    services: Vec<Uri>,
    resolve_interval: Duration,
    endpoint: fn(Uri) -> Endpoint,
) -> (Channel, Arc<Notify>) {
    let (channel, changes) = Channel::balance_channel::<Uri>(CHANGE_CAPACITY);
    let refresh = Arc::new(Notify::new());
    tokio::spawn(keep_replicas(
        services,
        resolve_interval,
        endpoint,
        changes,
        refresh.clone(),
    ));
    (channel, refresh)
}

/// Keeps the balancer's set equal to [`live_replicas`] until the balancer is gone.
async fn keep_replicas(
    services: Vec<Uri>,
    resolve_interval: Duration,
    endpoint: fn(Uri) -> Endpoint,
    changes: tokio::sync::mpsc::Sender<Change<Uri, Endpoint>>,
    refresh: Arc<Notify>,
) {
    let mut current: HashSet<Replica> = HashSet::new();
    loop {
        let wanted = live_replicas(&services).await;
        for gone in current.difference(&wanted) {
            tracing::info!(replica = %gone.key, "replica left the set");
            if changes
                .send(Change::Remove(gone.key.clone()))
                .await
                .is_err()
            {
                return;
            }
        }
        for new in wanted.difference(&current) {
            tracing::info!(replica = %new.key, "replica joined the set");
            let replica = endpoint(new.key.clone()).origin(new.origin.clone());
            if changes
                .send(Change::Insert(new.key.clone(), replica))
                .await
                .is_err()
            {
                return;
            }
        }
        current = wanted;
        tokio::select! {
            () = changes.closed() => return,
            () = tokio::time::sleep(resolve_interval) => {}
            () = refresh.notified() => tokio::time::sleep(MIN_REFRESH_PAUSE).await,
        }
    }
}

/// The replicas of `services` that accept a TCP connection now; all of them when none does.
async fn live_replicas(services: &[Uri]) -> HashSet<Replica> {
    let mut candidates = HashSet::new();
    for service in services {
        candidates.extend(resolve(service).await);
    }
    let mut probes = JoinSet::new();
    for replica in candidates.iter().cloned() {
        probes.spawn(async move {
            let connected = tokio::time::timeout(
                PROBE_TIMEOUT,
                TcpStream::connect((replica.probe.0.as_str(), replica.probe.1)),
            )
            .await
            .is_ok_and(|connected| connected.is_ok());
            (replica, connected)
        });
    }
    let mut live = HashSet::new();
    while let Some(probe) = probes.join_next().await {
        if let Ok((replica, true)) = probe {
            live.insert(replica);
        }
    }
    if live.is_empty() { candidates } else { live }
}

/// The replicas one service URL stands for: every address its host resolves to, or the URL
/// itself when it does not resolve (tonic then reports the resolution error on each call).
async fn resolve(service: &Uri) -> Vec<Replica> {
    let (Some(host), Some(port)) = (service.host(), service.port_u16()) else {
        return Vec::new();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => addresses.collect(),
        Err(e) => {
            tracing::warn!(service = %service, error = %e, "cannot resolve a service's replicas");
            Vec::new()
        }
    };
    let as_written = Replica {
        key: service.clone(),
        origin: service.clone(),
        probe: (host.to_owned(), port),
    };
    if addresses.is_empty() {
        return vec![as_written];
    }
    addresses
        .into_iter()
        .filter_map(|address| {
            let key = format!("http://{address}").parse().ok()?;
            Some(Replica {
                key,
                origin: service.clone(),
                probe: (address.ip().to_string(), address.port()),
            })
        })
        .collect()
}
