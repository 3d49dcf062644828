//! The per-key cap on streams open at once (`[[tiers]] max_concurrent_streams`): which streaming
//! requests of each key are open, by request id, from their admission until their settlement
//! (every admitted request is settled exactly once, however its stream ends), each also bounded
//! by its reservation's expiry so a settlement that never arrives cannot hold a slot forever.
//!
//! Counted in the billing process's memory: one billing process (the monolith, or the billing
//! target) counts exactly; N monolith replicas each count their own streams, so a key may have
//! up to N × the cap open across them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Open streams by key id, then by request id, with the instant (Unix ms) their slot lapses.
#[derive(Debug, Default)]
pub(crate) struct OpenStreams(Mutex<HashMap<String, HashMap<String, i64>>>);

impl OpenStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, i64>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens `request_id`'s slot if `key_id` has fewer than `cap` streams open at `now` (an
    /// already open request id keeps its slot: Admit is idempotent). False when at the cap.
    pub(crate) fn open(
        &self,
        key_id: &str,
        request_id: &str,
        cap: u32,
        now: i64,
        expires_at: i64,
    ) -> bool {
        let mut keys = self.lock();
        let open = keys.entry(key_id.to_owned()).or_default();
        open.retain(|_, lapses| *lapses > now);
        if open.contains_key(request_id) {
            return true;
        }
        if open.len() >= usize::try_from(cap).unwrap_or(usize::MAX) {
            return false;
        }
        open.insert(request_id.to_owned(), expires_at);
        true
    }

    /// Frees `request_id`'s slot (its stream ended, or its admission was refused later).
    pub(crate) fn close(&self, key_id: &str, request_id: &str) {
        let mut keys = self.lock();
        if let Some(open) = keys.get_mut(key_id) {
            open.remove(request_id);
            if open.is_empty() {
                keys.remove(key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_cap_until_a_stream_closes_or_lapses() {
        let streams = OpenStreams::default();
        assert!(streams.open("k", "a", 2, 0, 100));
        assert!(streams.open("k", "b", 2, 0, 200));
        assert!(!streams.open("k", "c", 2, 0, 100));
        assert!(streams.open("k", "a", 2, 0, 100), "a retried admission");
        assert!(streams.open("other", "c", 2, 0, 100), "per key");
        streams.close("k", "a");
        assert!(streams.open("k", "c", 2, 0, 300));
        assert!(!streams.open("k", "d", 2, 150, 300));
        assert!(streams.open("k", "d", 2, 200, 300), "b's slot lapsed");
    }
}
