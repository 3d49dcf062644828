//! Whether this process is alive and should get traffic. gRPC health (`grpc.health.v1`) per
//! service name, turned NOT_SERVING when the process drains; HTTP `GET /livez` (the process
//! answers) and `GET /readyz` (not draining, and every dependency of this target answers: the
//! database, Redis when configured, the targets it dials through their gRPC health), served on
//! the REST listener by the rest and all targets and on `metrics_addr` by the others.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tollgate::transport::GrpcTransport;
use tollgate_billing::SharedLimits;
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_check_response, health_client::HealthClient},
    server::HealthReporter,
};

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One thing this process needs in order to serve.
#[derive(Debug, Clone)]
pub enum Dependency {
    Database(DatabaseConnection),
    Redis(SharedLimits),
    /// Another target, asked for the health of `service` (`tollgate.v1.Catalog`...).
    Peer {
        name: &'static str,
        service: &'static str,
        transport: GrpcTransport,
    },
}

impl Dependency {
    fn name(&self) -> &'static str {
        match self {
            Self::Database(_) => "database",
            Self::Redis(_) => "redis",
            Self::Peer { name, .. } => name,
        }
    }

    async fn check(&self) -> Result<(), String> {
        match self {
            Self::Database(db) => db.ping().await.map_err(|e| e.to_string()),
            Self::Redis(redis) => redis.ping().await.map_err(|e| e.to_string()),
            Self::Peer {
                service, transport, ..
            } => {
                let mut request = tonic::Request::new(HealthCheckRequest {
                    service: (*service).to_owned(),
                });
                request.set_timeout(CHECK_TIMEOUT);
                let status = HealthClient::new(transport.clone())
                    .check(request)
                    .await
                    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
                    .into_inner()
                    .status();
                match status {
                    health_check_response::ServingStatus::Serving => Ok(()),
                    other => Err(format!("{service} is {}", other.as_str_name())),
                }
            }
        }
    }
}

/// The process's health: its gRPC health reporter, the services it serves, what it depends on,
/// and whether it drains. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    reporter: HealthReporter,
    services: Vec<&'static str>,
    dependencies: Vec<Dependency>,
    draining: AtomicBool,
}

impl Health {
    /// Marks `services` SERVING on `reporter`.
    pub async fn new(
        reporter: HealthReporter,
        services: Vec<&'static str>,
        dependencies: Vec<Dependency>,
    ) -> Self {
        for service in &services {
            reporter
                .set_service_status(*service, ServingStatus::Serving)
                .await;
        }
        Self {
            inner: Arc::new(Inner {
                reporter,
                services,
                dependencies,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the drain: every service (and the whole server, `""`) turns NOT_SERVING and
    /// `/readyz` answers 503 from now on.
    pub async fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        for service in self.inner.services.iter().copied().chain([""]) {
            self.inner
                .reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    }

    /// Every dependency's state (`"ok"` or why not), checked concurrently, and whether the
    /// process is ready.
    pub async fn readiness(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let checks = self.inner.dependencies.iter().map(|dependency| async move {
            let result = tokio::time::timeout(CHECK_TIMEOUT, dependency.check())
                .await
                .unwrap_or_else(|_| Err("no answer in time".to_owned()));
            (dependency.name(), result)
        });
        let results = futures::future::join_all(checks).await;
        let draining = self.inner.draining.load(Ordering::SeqCst);
        let mut ready = !draining;
        let mut report = serde_json::Map::new();
        for (name, result) in results {
            let state = match result {
                Ok(()) => "ok".to_owned(),
                Err(why) => {
                    ready = false;
                    why
                }
            };
            report.insert(name.to_owned(), state.into());
        }
        (ready, report)
    }

    /// `GET /livez` and `GET /readyz`.
    pub fn routes(&self) -> Router {
        let health = self.clone();
        Router::new().route("/livez", get(|| async { "ok" })).route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let draining = health.inner.draining.load(Ordering::SeqCst);
                    let (ready, checks) = health.readiness().await;
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = json!({
                        "ready": ready,
                        "draining": draining,
                        "checks": checks,
                    });
                    (status, Json(body)).into_response()
                }
            }),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tollgate::transport::{dial, in_process};

    use super::*;

    async fn status_of(transport: &GrpcTransport, service: &str) -> i32 {
        HealthClient::new(transport.clone())
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }

    #[tokio::test]
    async fn draining_turns_every_service_not_serving_and_readiness_false() {
        let (reporter, server) = tonic_health::server::health_reporter();
        let health = Health::new(reporter, vec!["tollgate.v1.Catalog"], vec![]).await;
        let transport = in_process(server);
        let serving = health_check_response::ServingStatus::Serving as i32;
        let not_serving = health_check_response::ServingStatus::NotServing as i32;
        assert_eq!(status_of(&transport, "tollgate.v1.Catalog").await, serving);
        assert!(health.readiness().await.0);

        health.drain().await;
        assert_eq!(
            status_of(&transport, "tollgate.v1.Catalog").await,
            not_serving
        );
        assert_eq!(status_of(&transport, "").await, not_serving);
        assert!(!health.readiness().await.0);
    }

    #[tokio::test]
    async fn readiness_follows_the_targets_dialed() {
        let (reporter, server) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("tollgate.v1.Catalog", ServingStatus::Serving)
            .await;
        // A port nothing listens on: bound, then closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let up = Dependency::Peer {
            name: "catalog",
            service: "tollgate.v1.Catalog",
            transport: in_process(server.clone()),
        };
        let unknown = Dependency::Peer {
            name: "billing",
            service: "tollgate.v1.Billing",
            transport: in_process(server),
        };
        let down = Dependency::Peer {
            name: "metering",
            service: "tollgate.v1.Metering",
            transport: dial(&format!("http://{addr}")).unwrap(),
        };
        let (own, _) = tonic_health::server::health_reporter();
        let health = Health::new(own.clone(), vec![], vec![up.clone()]).await;
        let (ready, checks) = health.readiness().await;
        assert!(ready);
        assert_eq!(checks["catalog"], "ok");

        let health = Health::new(own, vec![], vec![up, unknown, down]).await;
        let (ready, checks) = health.readiness().await;
        assert!(!ready);
        assert_eq!(checks["catalog"], "ok");
        assert_eq!(checks["billing"], "NotFound: service not registered");
        let metering = checks["metering"].as_str().unwrap();
        assert!(metering.starts_with("Unavailable: "), "{metering}");
    }
}
