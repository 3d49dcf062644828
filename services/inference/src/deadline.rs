//! How Inference calls the services it depends on across the network: every call carries the
//! time left of the request's deadline as its `grpc-timeout`, and the calls that are safe to
//! repeat (Admit and Settle, idempotent by request id) are retried while the service is
//! unreachable or restarting (UNAVAILABLE, or a connection that broke mid-call), with backoff,
//! until the deadline. In the monolith the same code runs over in-process transports, where
//! nothing is ever unreachable.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status, metadata::MetadataMap};

/// First pause between two attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// When a request must be done by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// `within` from now.
    pub(crate) fn after(within: Duration) -> Self {
        Self(Instant::now() + within)
    }

    /// `within` from now, or sooner when the caller's `grpc-timeout` says so.
    pub(crate) fn of_caller(metadata: &MetadataMap, within: Duration) -> Self {
        let caller = tollgate::caller::grpc_timeout(metadata);
        Self::after(caller.map_or(within, |caller| caller.min(within)))
    }

    /// The time left, if any.
    pub(crate) fn left(self) -> Option<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// The moment itself.
    pub(crate) fn instant(self) -> Instant {
        self.0
    }

    /// The earlier of the two.
    pub(crate) fn min(self, other: Self) -> Self {
        Self(self.0.min(other.0))
    }
}

/// Whether a failed call may be repeated: the service was unreachable, restarting, or the
/// connection broke before its answer arrived.
fn unreachable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown)
}

fn deadline_exceeded(what: &str, last: Option<Status>) -> Status {
    let detail = last.map_or_else(String::new, |s| format!(" (last: {})", s.message()));
    Status::unavailable(format!(
        "{what}: no answer within the request's deadline{detail}"
    ))
}

/// Runs `call` once with the time left until `deadline` (it sets that as the call's
/// `grpc-timeout`).
pub(crate) async fn once<T, Fut>(
    what: &str,
    deadline: Deadline,
    call: impl FnOnce(Duration) -> Fut,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let left = deadline
        .left()
        .ok_or_else(|| deadline_exceeded(what, None))?;
    tokio::time::timeout(left, call(left))
        .await
        .unwrap_or_else(|_| Err(deadline_exceeded(what, None)))
}

/// Runs an idempotent `call` until it answers, fails for a reason other than reachability, or
/// `deadline` passes; each attempt gets the time left. `request_id` names the request in the
/// retry's log line.
pub(crate) async fn retried<T, Fut>(
    what: &str,
    request_id: &str,
    deadline: Deadline,
    mut call: impl FnMut(Duration) -> Fut,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        let Some(left) = deadline.left() else {
            return Err(deadline_exceeded(what, None));
        };
        let status = match tokio::time::timeout(left, call(left)).await {
            Ok(Err(status)) if unreachable(&status) => status,
            Ok(answer) => return answer,
            Err(_) => return Err(deadline_exceeded(what, None)),
        };
        match deadline.left() {
            Some(left) if left > backoff => {
                tracing::warn!(request_id, attempt, error = %status, "{what}: unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            _ => return Err(deadline_exceeded(what, Some(status))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn the_callers_deadline_caps_the_request() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "100m".parse().unwrap());
        let left = Deadline::of_caller(&md, Duration::from_secs(60))
            .left()
            .unwrap();
        assert!(left <= Duration::from_millis(100));
        let left = Deadline::of_caller(&MetadataMap::new(), Duration::from_secs(60))
            .left()
            .unwrap();
        assert!(left > Duration::from_secs(59));
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_calls_are_retried_until_they_answer() {
        let calls = AtomicU32::new(0);
        let answer = retried(
            "Admit",
            "chatcmpl-test",
            Deadline::after(Duration::from_secs(10)),
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(Status::unavailable("connection refused"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(answer.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_are_not_retried_and_the_deadline_ends_the_retries() {
        let calls = AtomicU32::new(0);
        let refused: Result<(), _> = retried(
            "Admit",
            "chatcmpl-test",
            Deadline::after(Duration::from_secs(10)),
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Status::resource_exhausted("rate limited")) }
            },
        )
        .await;
        assert_eq!(refused.unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let started = Instant::now();
        let down: Result<(), _> = retried(
            "Settle",
            "chatcmpl-test",
            Deadline::after(Duration::from_secs(3)),
            |left| {
                assert!(left <= Duration::from_secs(3));
                async { Err(Status::unavailable("connection refused")) }
            },
        )
        .await;
        let down = down.unwrap_err();
        assert_eq!(down.code(), Code::Unavailable);
        assert!(down.message().contains("deadline"), "{}", down.message());
        assert!(started.elapsed() <= Duration::from_secs(3));
    }
}
