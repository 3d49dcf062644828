//! Anthropic's named-event stream (providers.md §2.3) translated into OpenAI chunks (§8.2) by a
//! pure state machine over the events' JSON, so the fixtures replay without HTTP:
//!
//! - `message_start` → the role chunk (`content: ""`), with the input side of usage;
//! - `content_block_start` of a `tool_use` → the opening tool-call delta, at OpenAI index *k* =
//!   the number of tool_use blocks before it (block indexes also count text and thinking);
//! - `input_json_delta` → argument fragments (empty ones skipped); `text_delta` → content;
//!   `thinking_delta` → `reasoning_content`; `signature_delta` is kept, and the whole thinking
//!   block goes out as a `reasoning_details` entry at its `content_block_stop` (a
//!   `redacted_thinking` block likewise);
//! - `message_delta` → the finish chunk, with the usage of `message_start` updated by the
//!   cumulative usage of `message_delta`;
//! - `ping`, `message_stop` and unknown events → nothing; `error` → an error item.

use std::collections::HashMap;

use serde::Deserialize;
use tollgate::v1::{ChatChunk, ChunkChoice, Delta, ReasoningDetail, Role, ToolCallDelta, Usage};

use super::response::{AnthropicUsage, Block, finish_reason, redacted_detail, thinking_detail};
use crate::UpstreamError;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    Error {
        error: ErrorBody,
    },
    // message_stop, ping, and event types added after this was written.
    #[serde(other)]
    Ignored,
}

#[derive(Debug, Deserialize)]
struct StartedMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    // citations_delta and anything new.
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

/// A thinking block being received.
#[derive(Debug, Default)]
struct OpenThinking {
    text: String,
    signature: String,
}

/// The translation state of one stream.
#[derive(Debug)]
pub struct StreamTranslator {
    provider: String,
    id: String,
    model: String,
    usage: AnthropicUsage,
    /// Block index → OpenAI tool-call index, for the tool_use blocks seen so far.
    tool_index: HashMap<u32, u32>,
    /// Thinking blocks still open, by block index.
    thinking: HashMap<u32, OpenThinking>,
    /// Reasoning details sent so far (their `index`).
    details: u32,
}

impl StreamTranslator {
    pub fn new(provider: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            id: String::new(),
            model: String::new(),
            usage: AnthropicUsage::default(),
            tool_index: HashMap::new(),
            thinking: HashMap::new(),
            details: 0,
        }
    }

    fn failed(&self, message: String) -> UpstreamError {
        UpstreamError::Failed {
            provider: self.provider.clone(),
            message,
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            created: 0,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Some(delta),
                finish_reason: finish.map(str::to_owned),
                logprobs_json: String::new(),
                stop_sequence: None,
            }],
            usage,
            system_fingerprint: None,
        }
    }

    fn detail(&mut self, make: impl FnOnce(u32) -> ReasoningDetail) -> Delta {
        let detail = make(self.details);
        self.details += 1;
        Delta {
            reasoning_details: vec![detail],
            ..Default::default()
        }
    }

    /// Translates one event's data; `None` when it yields no chunk.
    pub fn on_event(&mut self, data: &str) -> Result<Option<ChatChunk>, UpstreamError> {
        let event: Event = serde_json::from_str(data)
            .map_err(|e| self.failed(format!("unreadable stream event: {e}")))?;
        let delta = match event {
            Event::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                if let Some(usage) = message.usage {
                    self.usage.merge(usage);
                }
                let delta = Delta {
                    role: Role::Assistant.into(),
                    content: Some(String::new()),
                    ..Default::default()
                };
                // The input side is known already: a stream that breaks later is still billed
                // for it.
                return Ok(Some(self.chunk(delta, None, Some(self.usage.normalise()))));
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::ToolUse { id, name, .. } => {
                    let k = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                    self.tool_index.insert(index, k);
                    Delta {
                        tool_calls: vec![ToolCallDelta {
                            index: k,
                            id: Some(id),
                            r#type: Some("function".into()),
                            name: Some(name),
                            arguments: Some(String::new()),
                        }],
                        ..Default::default()
                    }
                }
                Block::Text { text } if !text.is_empty() => Delta {
                    content: Some(text),
                    ..Default::default()
                },
                Block::Thinking {
                    thinking,
                    signature,
                } => {
                    let delta = (!thinking.is_empty()).then(|| Delta {
                        reasoning_content: Some(thinking.clone()),
                        ..Default::default()
                    });
                    self.thinking.insert(
                        index,
                        OpenThinking {
                            text: thinking,
                            signature,
                        },
                    );
                    match delta {
                        Some(delta) => delta,
                        None => return Ok(None),
                    }
                }
                Block::RedactedThinking { data } => self.detail(|i| redacted_detail(&data, i)),
                Block::Text { .. } | Block::Other => return Ok(None),
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } if !text.is_empty() => Delta {
                    content: Some(text),
                    ..Default::default()
                },
                BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    let Some(&k) = self.tool_index.get(&index) else {
                        return Err(self.failed(format!(
                            "input_json_delta for block {index}, which is not a tool_use block"
                        )));
                    };
                    Delta {
                        tool_calls: vec![ToolCallDelta {
                            index: k,
                            arguments: Some(partial_json),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }
                }
                BlockDelta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                    self.thinking
                        .entry(index)
                        .or_default()
                        .text
                        .push_str(&thinking);
                    Delta {
                        reasoning_content: Some(thinking),
                        ..Default::default()
                    }
                }
                BlockDelta::SignatureDelta { signature } => {
                    self.thinking
                        .entry(index)
                        .or_default()
                        .signature
                        .push_str(&signature);
                    return Ok(None);
                }
                _ => return Ok(None),
            },
            Event::ContentBlockStop { index } => match self.thinking.remove(&index) {
                Some(block) => self.detail(|i| thinking_detail(&block.text, &block.signature, i)),
                None => return Ok(None),
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.usage.merge(usage);
                }
                let finish = finish_reason(delta.stop_reason.as_deref());
                let mut chunk =
                    self.chunk(Delta::default(), Some(finish), Some(self.usage.normalise()));
                if let Some(choice) = chunk.choices.first_mut() {
                    choice.stop_sequence = delta.stop_sequence;
                }
                return Ok(Some(chunk));
            }
            Event::Error { error } => {
                return Err(match error.kind.as_str() {
                    "overloaded_error" | "rate_limit_error" => UpstreamError::Overloaded {
                        provider: self.provider.clone(),
                        status: 529,
                        retry_after_secs: None,
                    },
                    _ => self.failed(format!("{}: {}", error.kind, error.message)),
                });
            }
            Event::Ignored => return Ok(None),
        };
        Ok(Some(self.chunk(delta, None, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `data:` payloads of an SSE fixture.
    fn data_lines(fixture: &str) -> Vec<&str> {
        fixture
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect()
    }

    fn replay(fixture: &str) -> Vec<ChatChunk> {
        let mut t = StreamTranslator::new("anthropic");
        data_lines(fixture)
            .into_iter()
            .filter_map(|d| t.on_event(d).unwrap())
            .collect()
    }

    fn delta(chunk: &ChatChunk) -> &Delta {
        chunk.choices[0].delta.as_ref().unwrap()
    }

    fn content(chunks: &[ChatChunk]) -> String {
        chunks
            .iter()
            .filter_map(|c| c.choices.first())
            .filter_map(|c| c.delta.as_ref()?.content.clone())
            .collect()
    }

    const AN_1: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK","type":"message","role":"assistant","content":[],"model":"claude-3-opus-latest","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6}}

event: message_stop
data: {"type":"message_stop"}
"#;

    const AN_2: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_019Q1hrJbZG26Fb9BQhrkHEr","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":377,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'ll check the current weather in Paris for you."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","name":"get_weather","caller":{"type":"direct"},"input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"locati"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"on\": \"P"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ar"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":65}}

event: message_stop
data: {"type":"message_stop"}
"#;

    const AN_3: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me solve this step by step:\n\n1. First break down 27 * 453"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\n2. 453 = 400 + 50 + 3"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\n3. 27 * 400 = 10,800"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\n4. 27 * 50 = 1,350"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\n5. 27 * 3 = 81"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\n6. 10,800 + 1,350 + 81 = 12,231"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: content_block_start
data: {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 1}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}

event: message_stop
data: {"type": "message_stop"}
"#;

    #[test]
    fn an_1_text_stream() {
        let chunks = replay(AN_1);
        let first = delta(&chunks[0]);
        assert_eq!(first.role(), Role::Assistant);
        assert_eq!(first.content.as_deref(), Some(""));
        assert_eq!(chunks[0].id, "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK");
        assert_eq!(content(&chunks), "Hello there!");
        // role, three text deltas, the finish chunk: ping, the empty block start, stops ignored.
        assert_eq!(chunks.len(), 5);
        let last = chunks.last().unwrap();
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("stop"));
        let usage = last.usage.unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (11, 6, 17)
        );
        assert!(
            chunks[1..chunks.len() - 1]
                .iter()
                .all(|c| c.usage.is_none())
        );
    }

    #[test]
    fn an_2_tool_use_stream_counts_tool_indexes_over_tool_blocks_only() {
        let chunks = replay(AN_2);
        assert_eq!(
            content(&chunks),
            "I'll check the current weather in Paris for you."
        );
        let calls: Vec<&ToolCallDelta> = chunks
            .iter()
            .flat_map(|c| c.choices[0].delta.as_ref().unwrap().tool_calls.iter())
            .collect();
        // Block 1 is the first tool_use: OpenAI index 0.
        assert!(calls.iter().all(|c| c.index == 0));
        assert_eq!(
            calls[0].id.as_deref(),
            Some("toolu_01NRLabsLyVHZPKxbKvkfSMn")
        );
        assert_eq!(calls[0].name.as_deref(), Some("get_weather"));
        assert_eq!(calls[0].r#type.as_deref(), Some("function"));
        // The empty fragment is skipped; the rest concatenate to the arguments.
        let fragments: Vec<&str> = calls[1..]
            .iter()
            .map(|c| c.arguments.as_deref().unwrap())
            .collect();
        assert_eq!(fragments, ["{\"locati", "on\": \"P", "ar", "is\"}"]);
        assert!(
            calls[1..]
                .iter()
                .all(|c| c.id.is_none() && c.name.is_none())
        );
        let last = chunks.last().unwrap();
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let usage = last.usage.unwrap();
        // Input usage from message_start, cumulative output from message_delta.
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (377, 65));
    }

    #[test]
    fn an_3_thinking_stream_gives_reasoning_and_a_signed_detail_at_block_stop() {
        let chunks = replay(AN_3);
        let reasoning: String = chunks
            .iter()
            .filter_map(|c| delta(c).reasoning_content.clone())
            .collect();
        assert!(reasoning.starts_with("Let me solve this step by step:"));
        assert!(reasoning.ends_with("10,800 + 1,350 + 81 = 12,231"));
        assert_eq!(content(&chunks), "27 * 453 = 12,231");
        let details: Vec<(usize, &ReasoningDetail)> = chunks
            .iter()
            .enumerate()
            .flat_map(|(i, c)| delta(c).reasoning_details.iter().map(move |d| (i, d)))
            .collect();
        assert_eq!(details.len(), 1);
        let (at, detail) = details[0];
        assert_eq!(
            *detail,
            thinking_detail(
                &reasoning,
                "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...",
                0
            )
        );
        // Sent once the block is complete: after every thinking delta, before the text.
        let last_reasoning = chunks
            .iter()
            .rposition(|c| delta(c).reasoning_content.is_some())
            .unwrap();
        let first_text = chunks
            .iter()
            .position(|c| delta(c).content.as_deref().is_some_and(|t| !t.is_empty()))
            .unwrap();
        assert!(last_reasoning < at && at < first_text);
        // No usage anywhere in this docs example: zeros, not a failure.
        let last = chunks.last().unwrap();
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(last.usage.unwrap().total_tokens, 0);
    }

    #[test]
    fn parallel_tool_uses_get_consecutive_indexes() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s1"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_a","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_b","name":"g","input":{}}}"#,
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"x\":1}"}}"#,
            r#"{"type":"content_block_stop","index":3}"#,
            r#"{"type":"some_future_event","detail":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":3,"cache_read_input_tokens":7,"cache_creation_input_tokens":2,"output_tokens":20,"output_tokens_details":{"thinking_tokens":4}}}"#,
        ];
        let mut t = StreamTranslator::new("anthropic");
        let chunks: Vec<ChatChunk> = events
            .iter()
            .filter_map(|e| t.on_event(e).unwrap())
            .collect();
        let opened: Vec<(u32, &str)> = chunks
            .iter()
            .flat_map(|c| delta(c).tool_calls.iter())
            .filter_map(|c| Some((c.index, c.id.as_deref()?)))
            .collect();
        assert_eq!(opened, [(0, "toolu_a"), (1, "toolu_b")]);
        let args: Vec<(u32, &str)> = chunks
            .iter()
            .flat_map(|c| delta(c).tool_calls.iter())
            .filter(|c| c.id.is_none())
            .map(|c| (c.index, c.arguments.as_deref().unwrap()))
            .collect();
        assert_eq!(args, [(0, "{}"), (1, "{\"x\":1}")]);
        let details: Vec<&ReasoningDetail> = chunks
            .iter()
            .flat_map(|c| delta(c).reasoning_details.iter())
            .collect();
        assert_eq!(
            details,
            [
                &thinking_detail("hm", "s1", 0),
                &redacted_detail("opaque", 1)
            ]
        );
        let usage = chunks.last().unwrap().usage.unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_prompt_tokens,
                usage.cache_write_tokens,
                usage.completion_tokens,
                usage.reasoning_tokens
            ),
            (12, 7, 2, 20, 4)
        );
    }

    #[test]
    fn error_events_fail_the_stream() {
        let mut t = StreamTranslator::new("anthropic");
        let overloaded = t
            .on_event(r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#)
            .unwrap_err();
        assert!(matches!(
            overloaded,
            UpstreamError::Overloaded { status: 529, .. }
        ));
        let other = t
            .on_event(r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#)
            .unwrap_err();
        assert!(other.to_string().contains("Internal server error"));
        assert!(
            matches!(t.on_event("not json"), Err(UpstreamError::Failed { message, .. }) if message.starts_with("unreadable stream event"))
        );
    }
}
