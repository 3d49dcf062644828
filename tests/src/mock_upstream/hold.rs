//! Holding answers until a test releases them, so tests synchronise on events instead of delays.
//! An OpenAI-protocol chat request whose last user message says `[hold=NAME]` is recorded, then
//! waits before its answer starts (for a stream: before its headers and first event) until the
//! test calls `POST /_mock/holds/NAME/release`; with `[hold_after_first=NAME]` a stream sends its
//! first chunk and holds the rest (`[hold_at=N]`: after the first N chunks). `GET /_mock/holds/NAME` says how many requests arrived under
//! that name and how many are waiting now. A released name lets later requests through at once.
//! A hold never released gives up after [`MAX_HOLD`] (a 503, or an in-band error in a stream),
//! so a broken test fails instead of hanging.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::{MockError, MockState, request::message_text};

/// The directive that holds an answer before it starts.
pub(super) const BEFORE_ANSWER: &str = "hold";
/// The directive that holds a stream after its first chunk.
pub(super) const AFTER_FIRST_CHUNK: &str = "hold_after_first";

/// The longest a request waits for its release.
pub const MAX_HOLD: Duration = Duration::from_secs(120);

/// What `GET /_mock/holds/NAME` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HoldStatus {
    /// Requests that arrived under this name so far.
    pub arrived: u64,
    /// Requests waiting for the release now (a request whose caller hung up stops waiting).
    pub waiting: u64,
    pub released: bool,
}

#[derive(Debug)]
struct Hold {
    status: HoldStatus,
    released: watch::Sender<bool>,
}

/// Every hold by name.
#[derive(Debug, Default)]
pub(super) struct Holds(Mutex<HashMap<String, Hold>>);

/// Counts one request as waiting until dropped (released, timed out, or its caller left).
struct Waiting<'h> {
    holds: &'h Holds,
    name: &'h str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(hold) = self.holds.lock().get_mut(self.name) {
            hold.status.waiting -= 1;
        }
    }
}

impl Holds {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Hold>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry<'m>(map: &'m mut HashMap<String, Hold>, name: &str) -> &'m mut Hold {
        map.entry(name.to_owned()).or_insert_with(|| Hold {
            status: HoldStatus::default(),
            released: watch::Sender::new(false),
        })
    }

    /// Waits until `name` is released; `false` if [`MAX_HOLD`] passed first.
    pub(super) async fn wait(&self, name: &str) -> bool {
        let mut released = {
            let mut map = self.lock();
            let hold = Self::entry(&mut map, name);
            hold.status.arrived += 1;
            hold.status.waiting += 1;
            hold.released.subscribe()
        };
        let _waiting = Waiting { holds: self, name };
        matches!(
            tokio::time::timeout(MAX_HOLD, released.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    pub(super) fn status(&self, name: &str) -> HoldStatus {
        self.lock()
            .get(name)
            .map(|hold| hold.status)
            .unwrap_or_default()
    }

    pub(super) fn release(&self, name: &str) {
        let mut map = self.lock();
        let hold = Self::entry(&mut map, name);
        hold.status.released = true;
        hold.released.send_replace(true);
    }
}

/// `[hold_at=N]`: the index of the first chunk a mid-stream hold holds back (default 1, after the
/// first chunk).
pub(super) fn position_in(body: &Value) -> usize {
    name_in(body, "hold_at")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The NAME of `[directive=NAME]` in a chat request's last user message.
pub(super) fn name_in(body: &Value, directive: &str) -> Option<String> {
    let last_user = body
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)?;
    let open = format!("[{directive}=");
    let start = last_user.find(&open)? + open.len();
    let rest = &last_user[start..];
    Some(rest[..rest.find(']')?].trim().to_owned())
}

/// The answer of a request whose hold was never released.
pub(super) fn never_released(name: &str) -> MockError {
    MockError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!("mock: hold {name} was never released"),
        kind: "server_error",
        param: None,
        code: None,
        base_resp: None,
    }
}

pub(super) async fn status(
    State(state): State<Arc<MockState>>,
    Path(name): Path<String>,
) -> Json<HoldStatus> {
    Json(state.holds.status(&name))
}

pub(super) async fn release(
    State(state): State<Arc<MockState>>,
    Path(name): Path<String>,
) -> StatusCode {
    state.holds.release(&name);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_name_is_read_from_the_last_user_message() {
        let body = json!({"messages": [
            {"role": "user", "content": "first [hold=old]"},
            {"role": "assistant", "content": "[hold=not-mine]"},
            {"role": "user", "content": "race 3 [hold=abc] [cache=1] [hold_after_first=def]"}
        ]});
        assert_eq!(name_in(&body, BEFORE_ANSWER).as_deref(), Some("abc"));
        assert_eq!(name_in(&body, AFTER_FIRST_CHUNK).as_deref(), Some("def"));
        let plain = json!({"messages": [{"role": "user", "content": "x"}]});
        assert_eq!(name_in(&plain, BEFORE_ANSWER), None);
    }

    #[tokio::test]
    async fn a_release_lets_waiting_and_later_requests_through() {
        let holds = Arc::new(Holds::default());
        let waiter = tokio::spawn({
            let holds = Arc::clone(&holds);
            async move { holds.wait("h").await }
        });
        // Bounded: the waiter registers within a few scheduler turns.
        for _ in 0..1000 {
            if holds.status("h").waiting == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            holds.status("h"),
            HoldStatus {
                arrived: 1,
                waiting: 1,
                released: false
            }
        );
        holds.release("h");
        assert!(waiter.await.unwrap());
        assert!(holds.wait("h").await, "a released name no longer holds");
        assert_eq!(
            holds.status("h"),
            HoldStatus {
                arrived: 2,
                waiting: 0,
                released: true
            }
        );
    }
}
