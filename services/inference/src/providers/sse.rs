//! Upstream server-sent events, decoded as the WHATWG event-stream format says: lines end with
//! `\n`, `\r\n` or `\r` (a `\r\n` split across two reads counts once), a leading byte-order mark
//! is dropped, `:` starts a comment, a field's value loses one leading space, `data:` lines join
//! with `\n`, and a blank line ends the event. Only the data is kept: no upstream protocol here
//! reads `event:`, `id:` or `retry:` (Anthropic's event type is also in its data's `type`).
//! An event whose data is blank is skipped; one left unfinished when the body ends is dropped.
//!
//! Written here rather than taken from `eventsource-stream`, which the gateway used before: that
//! parser copies the rest of its buffer after every line it reads (`String::split_off`) and
//! decodes every chunk into a `String` first, which made upstream SSE parsing about 4% of a
//! request's instructions in the profile of a streamed request (`tollgate-bench profile`). This
//! decoder scans each chunk once with `memchr`, copies only a line that a read cut in two, and
//! checks UTF-8 on the data it keeps.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

/// Why an upstream event stream stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("{0}")]
    Transport(reqwest::Error),
    #[error("an event is larger than {0} bytes")]
    EventTooLarge(usize),
    #[error("an event's data is not UTF-8")]
    NotUtf8,
}

/// The decoding state between reads.
#[derive(Debug)]
pub struct Decoder {
    /// The most bytes one event may span (its lines, comments included, and line ends).
    max_event_bytes: usize,
    /// The start of a line a read ended in.
    partial: Vec<u8>,
    /// The event's data lines so far, joined with `\n`.
    data: String,
    /// Whether a `data` field was seen in this event (an empty one included).
    has_data: bool,
    /// The bytes this event has spanned so far.
    event_bytes: usize,
    /// The last line ended with `\r`: a `\n` that follows belongs to it.
    after_cr: bool,
    /// The first line was read (its byte-order mark dropped).
    started: bool,
}

impl Decoder {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            partial: Vec::new(),
            data: String::new(),
            has_data: false,
            event_bytes: 0,
            after_cr: false,
            started: false,
        }
    }

    /// Reads `chunk`, pushing the data of each event it ends onto `events`.
    pub fn feed(&mut self, chunk: &[u8], events: &mut VecDeque<String>) -> Result<(), SseError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            if std::mem::take(&mut self.after_cr) && rest[0] == b'\n' {
                rest = &rest[1..];
                continue;
            }
            let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.partial.extend_from_slice(rest);
                self.count(rest.len())?;
                break;
            };
            self.count(at + 1)?;
            self.after_cr = rest[at] == b'\r';
            if self.partial.is_empty() {
                self.line(&rest[..at], events)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..at]);
                self.line(&line, events)?;
                // The buffer is kept for the next cut line.
                line.clear();
                self.partial = line;
            }
            rest = &rest[at + 1..];
        }
        Ok(())
    }

    fn count(&mut self, bytes: usize) -> Result<(), SseError> {
        self.event_bytes = self.event_bytes.saturating_add(bytes);
        if self.event_bytes > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    fn line(&mut self, mut line: &[u8], events: &mut VecDeque<String>) -> Result<(), SseError> {
        if !std::mem::replace(&mut self.started, true) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.event_bytes = 0;
            if std::mem::take(&mut self.has_data) {
                let data = std::mem::take(&mut self.data);
                if !data.trim().is_empty() {
                    events.push_back(data);
                }
            }
            return Ok(());
        }
        let (name, value) = match memchr::memchr(b':', line) {
            // A comment.
            Some(0) => return Ok(()),
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if name == b"data" {
            let value = std::str::from_utf8(value).map_err(|_| SseError::NotUtf8)?;
            if std::mem::replace(&mut self.has_data, true) {
                self.data.push('\n');
            }
            self.data.push_str(value);
        }
        Ok(())
    }
}

/// The data of each event of an upstream body, in order; the first failure (the body broke, an
/// event too large or not UTF-8) is the last item.
pub struct Events<S> {
    body: S,
    decoder: Decoder,
    /// Events read and not yet taken.
    ready: VecDeque<String>,
    /// Why the stream stopped, given after the events read before it.
    failed: Option<SseError>,
    ended: bool,
}

impl<S> Events<S> {
    pub fn new(body: S, max_event_bytes: usize) -> Self {
        Self {
            body,
            decoder: Decoder::new(max_event_bytes),
            ready: VecDeque::new(),
            failed: None,
            ended: false,
        }
    }
}

impl<S, B> Stream for Events<S>
where
    S: Stream<Item = Result<B, reqwest::Error>> + Unpin,
    B: AsRef<[u8]>,
{
    type Item = Result<String, SseError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(data)));
            }
            if let Some(failed) = this.failed.take() {
                return Poll::Ready(Some(Err(failed)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match std::task::ready!(this.body.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => {
                    if let Err(err) = this.decoder.feed(chunk.as_ref(), &mut this.ready) {
                        this.failed = Some(err);
                        this.ended = true;
                    }
                }
                Some(Err(err)) => {
                    this.failed = Some(SseError::Transport(err));
                    this.ended = true;
                }
                None => this.ended = true,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The events of `chunks` fed one by one, each event at most `bound` bytes.
    fn decode_within(bound: usize, chunks: &[&[u8]]) -> Result<Vec<String>, SseError> {
        let mut decoder = Decoder::new(bound);
        let mut events = VecDeque::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut events)?;
        }
        Ok(events.into())
    }

    fn decode(chunks: &[&[u8]]) -> Result<Vec<String>, SseError> {
        decode_within(1024, chunks)
    }

    /// The events of `text` whole, and cut into reads at every byte: the same every time.
    fn every_cut(text: &[u8]) -> Vec<String> {
        let whole = decode(&[text]).unwrap();
        for at in 0..=text.len() {
            assert_eq!(
                decode(&[&text[..at], &text[at..]]).unwrap(),
                whole,
                "cut at {at}"
            );
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(decode(&bytes).unwrap(), whole, "byte by byte");
        whole
    }

    #[test]
    fn every_line_ending_ends_lines_wherever_the_reads_cut() {
        assert_eq!(
            every_cut(b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\r\n\n"),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn data_lines_join_and_other_fields_and_comments_are_skipped() {
        let text = "\u{feff}: hello\nevent: message_start\nid: 7\nretry: 10\ndata: {\"a\":\ndata:1}\n\n\
                    data:  two spaces\nfoo\n\n";
        assert_eq!(every_cut(text.as_bytes()), ["{\"a\":\n1}", " two spaces"]);
    }

    #[test]
    fn blank_data_is_skipped_and_an_unfinished_event_dropped() {
        assert_eq!(
            every_cut(b"data:\n\ndata:   \n\n: keep-alive\n\ndata: x\n\ndata: cut"),
            ["x"]
        );
        assert_eq!(every_cut(b"\n\n\r\n"), Vec::<String>::new());
    }

    #[test]
    fn multibyte_characters_cut_by_a_read_are_whole_in_the_data() {
        assert_eq!(every_cut("data: é🦀ü\n\n".as_bytes()), ["é🦀ü"]);
    }

    #[test]
    fn data_that_is_not_utf8_fails() {
        assert!(matches!(
            decode(&[b"data: \xff\n\n"]),
            Err(SseError::NotUtf8)
        ));
    }

    #[tokio::test]
    async fn events_read_before_a_failure_come_first() {
        let body = futures::stream::iter(vec![Ok::<_, reqwest::Error>(
            &b"data: 1\n\ndata: \xff\n\ndata: 3\n\n"[..],
        )]);
        let items: Vec<_> = Events::new(body, 1024).collect().await;
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap(), "1");
        assert!(matches!(items[1], Err(SseError::NotUtf8)));
    }

    #[test]
    fn an_event_past_the_bound_fails_whatever_its_lines() {
        // 64 bytes at most per event: a long line, and many short ones, both fail.
        assert!(matches!(
            decode_within(64, &[&[b'a'; 40], &[b'b'; 40]]),
            Err(SseError::EventTooLarge(64))
        ));
        let many = ": c\n".repeat(17);
        assert!(matches!(
            decode_within(64, &[many.as_bytes()]),
            Err(SseError::EventTooLarge(64))
        ));
        // Blank lines start the count again.
        let events = ": c\n\n".repeat(100);
        assert!(decode_within(64, &[events.as_bytes()]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_broken_body_is_the_last_item() {
        let client = reqwest::Client::new();
        // An error from reqwest without a network: a URL it cannot use.
        let transport = client.get("http://[::1]:0/").send().await.unwrap_err();
        let body = futures::stream::iter(vec![
            Ok(&b"data: 1\n\ndata: 2\n"[..]),
            Ok(&b"\n"[..]),
            Err(transport),
            Ok(&b"data: 3\n\n"[..]),
        ]);
        let items: Vec<_> = Events::new(body, 1024).collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap(), "1");
        assert_eq!(items[1].as_ref().unwrap(), "2");
        assert!(matches!(items[2], Err(SseError::Transport(_))));
    }
}
