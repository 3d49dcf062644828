//! `tollgate.v1.ChatChunk`s translated into Anthropic's named stream events by a pure state
//! machine, so `client.messages.stream(...)` assembles the same message the non-streamed call
//! returns:
//!
//! - the first chunk → `message_start` (empty content, usage zero: the counts come at the end)
//!   and a `ping`;
//! - `reasoning_content` → a `thinking` block and `thinking_delta`s; a completed Anthropic
//!   reasoning detail → its `signature_delta` and the block's stop (a redacted one → a
//!   `redacted_thinking` block); other providers' details → a `signature_delta` carrying them
//!   (see `opaque_reasoning`);
//! - `content` → a `text` block and `text_delta`s;
//! - a tool call's opening delta → a `tool_use` block, its argument fragments → `input_json_delta`s;
//! - a new kind of block stops the open one; the finish reason stops the last;
//! - the usage chunk (after settlement, with the cost) → `message_delta` with `stop_reason`,
//!   `stop_sequence` and the whole usage; the end → `message_stop`.
//!
//! A failure mid-stream is an `error` event in Anthropic's error shape.

use std::collections::HashMap;

use serde_json::{Value, json};
use tollgate::{
    error::ApiError,
    v1::{ChatChunk, ReasoningDetail},
};

use super::{
    request::ANTHROPIC_REASONING_FORMAT,
    response::{message_id, stop_reason, usage},
};
use crate::{named_events::Translator, opaque_reasoning};

/// One event: its name and its data.
pub type Event = (&'static str, Value);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    Tool,
}

/// The translation state of one stream.
#[derive(Debug, Default)]
pub struct MessagesStream {
    started: bool,
    /// The open block: its index and kind.
    open: Option<(u32, Kind)>,
    /// Blocks started so far.
    blocks: u32,
    /// OpenAI tool-call index → block index.
    tools: HashMap<u32, u32>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    delta_sent: bool,
}

impl MessagesStream {
    pub fn new() -> Self {
        Self::default()
    }

    fn start_block(&mut self, kind: Kind, block: Value, out: &mut Vec<Event>) -> u32 {
        self.stop_block(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((index, kind));
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn stop_block(&mut self, out: &mut Vec<Event>) {
        if let Some((index, _)) = self.open.take() {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// The open block of `kind`, opened with `block` if another kind (or none) is open.
    fn block_of(&mut self, kind: Kind, block: impl FnOnce() -> Value, out: &mut Vec<Event>) -> u32 {
        match self.open {
            Some((index, open)) if open == kind => index,
            _ => self.start_block(kind, block(), out),
        }
    }

    fn delta(index: u32, delta: Value, out: &mut Vec<Event>) {
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    fn thinking_block() -> Value {
        json!({"type": "thinking", "thinking": "", "signature": ""})
    }

    /// Completed reasoning details: Anthropic's close their thinking block with its signature;
    /// the rest travel as one gateway signature.
    fn details(&mut self, details: &[ReasoningDetail], out: &mut Vec<Event>) {
        let mut others = Vec::new();
        for detail in details {
            if detail.format.as_deref() != Some(ANTHROPIC_REASONING_FORMAT) {
                others.push(detail.clone());
                continue;
            }
            match detail.r#type.as_str() {
                "reasoning.text" => {
                    let index = self.block_of(Kind::Thinking, Self::thinking_block, out);
                    let signature = detail.signature.clone().unwrap_or_default();
                    Self::delta(
                        index,
                        json!({"type": "signature_delta", "signature": signature}),
                        out,
                    );
                    self.stop_block(out);
                }
                "reasoning.encrypted" => {
                    let data = detail.data.clone().unwrap_or_default();
                    self.start_block(
                        Kind::Thinking,
                        json!({"type": "redacted_thinking", "data": data}),
                        out,
                    );
                    self.stop_block(out);
                }
                _ => {}
            }
        }
        if !others.is_empty() {
            let index = self.block_of(Kind::Thinking, Self::thinking_block, out);
            Self::delta(
                index,
                json!({"type": "signature_delta", "signature": opaque_reasoning::encode(&others)}),
                out,
            );
            self.stop_block(out);
        }
    }

    /// The events for one chunk.
    fn chunk_events(&mut self, chunk: &ChatChunk) -> Vec<Event> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push((
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": message_id(&chunk.id),
                    "type": "message",
                    "role": "assistant",
                    "model": chunk.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            ));
            out.push(("ping", json!({"type": "ping"})));
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(delta) = &choice.delta {
                if let Some(text) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
                    let index = self.block_of(Kind::Thinking, Self::thinking_block, &mut out);
                    Self::delta(
                        index,
                        json!({"type": "thinking_delta", "thinking": text}),
                        &mut out,
                    );
                }
                self.details(&delta.reasoning_details, &mut out);
                let text = delta
                    .content
                    .as_deref()
                    .into_iter()
                    .chain(delta.refusal.as_deref())
                    .filter(|t| !t.is_empty());
                for text in text {
                    let index =
                        self.block_of(Kind::Text, || json!({"type": "text", "text": ""}), &mut out);
                    Self::delta(index, json!({"type": "text_delta", "text": text}), &mut out);
                }
                for call in &delta.tool_calls {
                    let index = match (self.tools.get(&call.index), &call.id) {
                        (Some(&index), _) => index,
                        (None, id) => {
                            let block = json!({
                                "type": "tool_use",
                                "id": id.clone().unwrap_or_default(),
                                "name": call.name.clone().unwrap_or_default(),
                                "input": {},
                            });
                            let index = self.start_block(Kind::Tool, block, &mut out);
                            self.tools.insert(call.index, index);
                            index
                        }
                    };
                    if let Some(arguments) = call.arguments.as_deref().filter(|a| !a.is_empty()) {
                        Self::delta(
                            index,
                            json!({"type": "input_json_delta", "partial_json": arguments}),
                            &mut out,
                        );
                    }
                }
            }
            if let Some(finish) = &choice.finish_reason {
                self.stop_block(&mut out);
                self.stop_reason = Some(stop_reason(finish, choice.stop_sequence.as_deref()));
                self.stop_sequence.clone_from(&choice.stop_sequence);
            }
        }
        if let Some(u) = &chunk.usage
            && chunk.choices.is_empty()
        {
            self.stop_block(&mut out);
            out.push(self.message_delta(usage(u)));
        }
        out
    }

    fn message_delta(&mut self, usage: Value) -> Event {
        self.delta_sent = true;
        (
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": self.stop_reason.unwrap_or("end_turn"),
                    "stop_sequence": self.stop_sequence,
                },
                "usage": usage,
            }),
        )
    }
}

impl Translator for MessagesStream {
    fn on_chunk(&mut self, chunk: &ChatChunk) -> Vec<Event> {
        self.chunk_events(chunk)
    }

    fn on_end(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.stop_block(&mut out);
        if !self.delta_sent {
            out.push(self.message_delta(json!({"output_tokens": 0})));
        }
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// An `error` event in Anthropic's error shape.
    fn on_error(&mut self, error: &ApiError) -> Vec<Event> {
        vec![("error", error.to_anthropic_json())]
    }
}

#[cfg(test)]
mod tests {
    use tollgate::v1::{ChunkChoice, Delta, ToolCallDelta, Usage};

    use super::*;

    fn chunk(delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            choices: vec![ChunkChoice {
                delta: Some(delta),
                finish_reason: finish.map(str::to_owned),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|(name, data)| match data["delta"]["type"].as_str() {
                Some(t) if *name == "content_block_delta" => format!("delta:{t}"),
                _ => match data["content_block"]["type"].as_str() {
                    Some(t) => format!("start:{t}"),
                    None => (*name).to_owned(),
                },
            })
            .collect()
    }

    #[test]
    fn thinking_text_and_a_tool_call_become_blocks_in_order() {
        let mut s = MessagesStream::new();
        let mut events = Vec::new();
        for c in [
            chunk(
                Delta {
                    role: tollgate::v1::Role::Assistant.into(),
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            ),
            chunk(
                Delta {
                    reasoning_content: Some("Hmm.".into()),
                    ..Default::default()
                },
                None,
            ),
            chunk(
                Delta {
                    reasoning_details: vec![ReasoningDetail {
                        r#type: "reasoning.text".into(),
                        text: Some("Hmm.".into()),
                        signature: Some("sig".into()),
                        format: Some(ANTHROPIC_REASONING_FORMAT.into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                None,
            ),
            chunk(
                Delta {
                    content: Some("Hi".into()),
                    ..Default::default()
                },
                None,
            ),
            chunk(
                Delta {
                    tool_calls: vec![ToolCallDelta {
                        index: 0,
                        id: Some("toolu_1".into()),
                        name: Some("f".into()),
                        arguments: Some(String::new()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                None,
            ),
            chunk(
                Delta {
                    tool_calls: vec![ToolCallDelta {
                        index: 0,
                        arguments: Some("{\"a\":1}".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                None,
            ),
            chunk(Delta::default(), Some("tool_calls")),
            ChatChunk {
                id: "chatcmpl-1".into(),
                usage: Some(Usage {
                    prompt_tokens: 10,
                    completion_tokens: 4,
                    cached_prompt_tokens: 3,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ] {
            events.extend(s.on_chunk(&c));
        }
        events.extend(s.on_end());
        assert_eq!(
            names(&events),
            vec![
                "message_start",
                "ping",
                "start:thinking",
                "delta:thinking_delta",
                "delta:signature_delta",
                "content_block_stop",
                "start:text",
                "delta:text_delta",
                "content_block_stop",
                "start:tool_use",
                "delta:input_json_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let indexes: Vec<_> = events
            .iter()
            .filter_map(|(_, d)| d["index"].as_u64())
            .collect();
        assert_eq!(indexes, vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        let delta = &events[12].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["input_tokens"], 7);
        assert_eq!(delta["usage"]["cache_read_input_tokens"], 3);
        assert_eq!(delta["usage"]["output_tokens"], 4);
        assert_eq!(events[0].1["message"]["id"], "msg_1");
    }

    #[test]
    fn stop_sequences_and_failures() {
        let mut s = MessagesStream::new();
        s.on_chunk(&chunk(
            Delta {
                content: Some("a".into()),
                ..Default::default()
            },
            None,
        ));
        let mut finish = chunk(Delta::default(), Some("stop"));
        finish.choices[0].stop_sequence = Some("END".into());
        s.on_chunk(&finish);
        let end = s.on_end();
        assert_eq!(end[0].1["delta"]["stop_reason"], "stop_sequence");
        assert_eq!(end[0].1["delta"]["stop_sequence"], "END");
        let (name, data) = s
            .on_error(&ApiError::new(tollgate::error::ErrorKind::Upstream, "boom"))
            .remove(0);
        assert_eq!(name, "error");
        assert_eq!(data["error"]["type"], "api_error");
    }
}
