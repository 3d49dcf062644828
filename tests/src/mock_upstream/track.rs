//! How each tracked stream ended, so tests can see when the gateway closed an upstream
//! connection. An OpenAI-protocol stream whose last user message says `[track=NAME]` is counted
//! under NAME as opened, then as finished (its last event written) or as closed early (the
//! gateway dropped the connection first), with the time of that close.
//! `GET /_mock/streams/NAME` answers the counts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Serialize;

use super::MockState;

/// The directive that tracks a stream.
pub(super) const DIRECTIVE: &str = "track";

/// What `GET /_mock/streams/NAME` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamStatus {
    pub opened: u64,
    /// Streams that wrote their last event.
    pub finished: u64,
    /// Streams whose connection the gateway closed before their last event.
    pub closed_early: u64,
    /// When the last early close was noticed (Unix milliseconds), 0 if none was.
    pub last_closed_ms: u64,
}

/// Every tracked stream's status by name.
#[derive(Debug, Default)]
pub(super) struct Tracks(Mutex<HashMap<String, StreamStatus>>);

impl Tracks {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, StreamStatus>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn status(&self, name: &str) -> StreamStatus {
        self.lock().get(name).copied().unwrap_or_default()
    }
}

/// One tracked stream: counted as closed early when dropped before [`Tracked::finish`].
pub(super) struct Tracked {
    state: Arc<MockState>,
    name: String,
    finished: bool,
}

impl Tracked {
    pub(super) fn open(state: Arc<MockState>, name: String) -> Self {
        state.tracks.lock().entry(name.clone()).or_default().opened += 1;
        Self {
            state,
            name,
            finished: false,
        }
    }

    pub(super) fn finish(mut self) {
        self.finished = true;
        if let Some(status) = self.state.tracks.lock().get_mut(&self.name) {
            status.finished += 1;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(status) = self.state.tracks.lock().get_mut(&self.name) {
            status.closed_early += 1;
            status.last_closed_ms = now_ms;
        }
    }
}

pub(super) async fn status(
    State(state): State<Arc<MockState>>,
    Path(name): Path<String>,
) -> Json<StreamStatus> {
    Json(state.tracks.status(&name))
}
