//! `tollgate.v1.ChatChunk`s translated into the Responses API's stream events by a pure state
//! machine, each event with its `sequence_number`, so the SDK's stream helpers assemble the same
//! response the non-streamed call returns:
//!
//! - the first chunk → `response.created`, `response.in_progress`;
//! - `reasoning_content` → a `reasoning` item (`output_item.added`,
//!   `reasoning_summary_part.added`, `reasoning_summary_text.delta`s); reasoning details are kept
//!   for its `encrypted_content`;
//! - `content` → a `message` item (`output_item.added`, `content_part.added`,
//!   `output_text.delta`s);
//! - a tool call → a `function_call` item (`output_item.added`,
//!   `function_call_arguments.delta`s);
//! - a new kind of item closes the open one with its `…done` events and `output_item.done`;
//! - the usage chunk (after settlement) → `response.completed` (or `response.incomplete` for a
//!   cut answer) carrying the whole response.
//!
//! A failure mid-stream is `response.failed` with the error.

use std::collections::HashMap;

use serde_json::{Value, json};
use tollgate::{
    error::ApiError,
    v1::{ChatChunk, ReasoningDetail},
};

use crate::named_events::Translator;

use super::response::{
    Envelope, Ids, function_call_id, function_call_item, message_item, output_text, reasoning_item,
    status, usage,
};

/// One event: its type and its data (with `type` and `sequence_number`).
pub type Event = (&'static str, Value);

/// An item being streamed.
#[derive(Debug)]
enum Open {
    Reasoning {
        text: String,
        details: Vec<ReasoningDetail>,
    },
    Message {
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// The translation state of one stream.
#[derive(Debug)]
pub struct ResponsesStream {
    envelope: Option<Envelope>,
    echo: serde_json::Map<String, Value>,
    sequence: u64,
    /// Finished items, by output index.
    output: Vec<Value>,
    open: Option<Open>,
    /// OpenAI tool-call index → whether its item is open (the only one that can be).
    calls: HashMap<u32, usize>,
    finish_reason: Option<String>,
    done: bool,
}

impl ResponsesStream {
    pub fn new(echo: serde_json::Map<String, Value>) -> Self {
        Self {
            envelope: None,
            echo,
            sequence: 0,
            output: vec![],
            open: None,
            calls: HashMap::new(),
            finish_reason: None,
            done: false,
        }
    }

    fn emit(&mut self, out: &mut Vec<Event>, kind: &'static str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push((kind, data));
    }

    fn ids(&self) -> Ids {
        self.envelope
            .as_ref()
            .map_or_else(|| Ids::new(""), |e| e.ids.clone())
    }

    fn index(&self) -> usize {
        self.output.len()
    }

    fn item_id(&self) -> String {
        let index = self.index();
        match &self.open {
            Some(Open::Reasoning { .. }) => self.ids().reasoning(index),
            Some(Open::Message { .. }) => self.ids().message(index),
            Some(Open::Call { call_id, .. }) => function_call_id(call_id),
            None => String::new(),
        }
    }

    fn open_item(&mut self, item: Open, out: &mut Vec<Event>) {
        self.close(out);
        let index = self.index();
        let ids = self.ids();
        let added = match &item {
            Open::Reasoning { .. } => json!({
                "id": ids.reasoning(index), "type": "reasoning", "summary": [], "status": "in_progress",
            }),
            Open::Message { .. } => message_item(&ids.message(index), "", "in_progress"),
            Open::Call { call_id, name, .. } => {
                function_call_item(call_id, name, "", "in_progress")
            }
        };
        let is_message = matches!(item, Open::Message { .. });
        self.open = Some(item);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        if is_message {
            let item_id = self.item_id();
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": output_text("")}),
            );
        }
    }

    /// Closes the open item with its `…done` events.
    fn close(&mut self, out: &mut Vec<Event>) {
        let item_id = self.item_id();
        let index = self.index();
        let Some(open) = self.open.take() else {
            return;
        };
        let item = match open {
            Open::Reasoning { text, details } => {
                if !text.is_empty() {
                    self.emit(
                        out,
                        "response.reasoning_summary_text.done",
                        json!({"item_id": item_id, "output_index": index, "summary_index": 0, "text": text}),
                    );
                    self.emit(
                        out,
                        "response.reasoning_summary_part.done",
                        json!({"item_id": item_id, "output_index": index, "summary_index": 0,
                               "part": {"type": "summary_text", "text": text}}),
                    );
                }
                reasoning_item(&item_id, &text, &details)
            }
            Open::Message { text } => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": output_text(&text)}),
                );
                message_item(&item_id, &text, "completed")
            }
            Open::Call {
                call_id,
                name,
                arguments,
            } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "name": name, "arguments": arguments}),
                );
                function_call_item(&call_id, &name, &arguments, "completed")
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.output.push(item);
    }

    /// The events for one chunk.
    fn chunk_events(&mut self, chunk: &ChatChunk) -> Vec<Event> {
        let mut out = Vec::new();
        if self.envelope.is_none() {
            self.envelope = Some(Envelope {
                ids: Ids::new(&chunk.id),
                created_at: chunk.created,
                model: chunk.model.clone(),
                echo: std::mem::take(&mut self.echo),
            });
            let response = self.snapshot("in_progress", Value::Null, None);
            self.emit(
                &mut out,
                "response.created",
                json!({"response": response.clone()}),
            );
            self.emit(
                &mut out,
                "response.in_progress",
                json!({"response": response}),
            );
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(delta) = &choice.delta {
                if let Some(text) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
                    self.reasoning_delta(text, &mut out);
                }
                if !delta.reasoning_details.is_empty() {
                    if !matches!(self.open, Some(Open::Reasoning { .. })) {
                        self.open_item(
                            Open::Reasoning {
                                text: String::new(),
                                details: vec![],
                            },
                            &mut out,
                        );
                    }
                    if let Some(Open::Reasoning { details, .. }) = &mut self.open {
                        details.extend(delta.reasoning_details.iter().cloned());
                    }
                }
                for text in [delta.content.as_deref(), delta.refusal.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter(|t| !t.is_empty())
                {
                    self.text_delta(text, &mut out);
                }
                for call in &delta.tool_calls {
                    if !self.calls.contains_key(&call.index) {
                        self.open_item(
                            Open::Call {
                                call_id: call.id.clone().unwrap_or_default(),
                                name: call.name.clone().unwrap_or_default(),
                                arguments: String::new(),
                            },
                            &mut out,
                        );
                        self.calls.insert(call.index, self.index());
                    }
                    let Some(arguments) = call.arguments.as_deref().filter(|a| !a.is_empty())
                    else {
                        continue;
                    };
                    let (item_id, index) = (self.item_id(), self.index());
                    if let Some(Open::Call { arguments: all, .. }) = &mut self.open {
                        all.push_str(arguments);
                        self.emit(
                            &mut out,
                            "response.function_call_arguments.delta",
                            json!({"item_id": item_id, "output_index": index, "delta": arguments}),
                        );
                    }
                }
            }
            if let Some(finish) = &choice.finish_reason {
                self.close(&mut out);
                self.finish_reason = Some(finish.clone());
            }
        }
        if let Some(u) = &chunk.usage
            && chunk.choices.is_empty()
        {
            self.finish(Some(usage(u)), &mut out);
        }
        out
    }

    fn reasoning_delta(&mut self, text: &str, out: &mut Vec<Event>) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.open_item(
                Open::Reasoning {
                    text: String::new(),
                    details: vec![],
                },
                out,
            );
        }
        let (item_id, index) = (self.item_id(), self.index());
        let first = matches!(&self.open, Some(Open::Reasoning { text, .. }) if text.is_empty());
        if first {
            self.emit(
                out,
                "response.reasoning_summary_part.added",
                json!({"item_id": item_id, "output_index": index, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
            );
        }
        if let Some(Open::Reasoning { text: all, .. }) = &mut self.open {
            all.push_str(text);
        }
        self.emit(
            out,
            "response.reasoning_summary_text.delta",
            json!({"item_id": item_id, "output_index": index, "summary_index": 0, "delta": text}),
        );
    }

    fn text_delta(&mut self, text: &str, out: &mut Vec<Event>) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.open_item(
                Open::Message {
                    text: String::new(),
                },
                out,
            );
        }
        let (item_id, index) = (self.item_id(), self.index());
        if let Some(Open::Message { text: all }) = &mut self.open {
            all.push_str(text);
        }
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
        );
    }

    fn snapshot(&self, status: &str, incomplete: Value, usage: Option<Value>) -> Value {
        self.envelope.as_ref().map_or(Value::Null, |e| {
            e.object(status, incomplete, self.output.clone(), usage)
        })
    }

    fn finish(&mut self, usage: Option<Value>, out: &mut Vec<Event>) {
        if self.done {
            return;
        }
        self.done = true;
        self.close(out);
        let (status, incomplete) = status(self.finish_reason.as_deref());
        let response = self.snapshot(status, incomplete, usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": response}));
    }
}

impl Translator for ResponsesStream {
    fn on_chunk(&mut self, chunk: &ChatChunk) -> Vec<Event> {
        self.chunk_events(chunk)
    }

    /// `response.completed` (or `response.incomplete`), unless the usage chunk ended it.
    fn on_end(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.finish(None, &mut out);
        out
    }

    /// `response.failed` with the error.
    fn on_error(&mut self, error: &ApiError) -> Vec<Event> {
        let mut out = Vec::new();
        let mut response = self.snapshot("failed", Value::Null, None);
        response["error"] = json!({"code": error.kind.openai_type(), "message": error.message});
        self.emit(&mut out, "response.failed", json!({"response": response}));
        out
    }
}

#[cfg(test)]
mod tests {
    use tollgate::v1::{ChunkChoice, Delta, ToolCallDelta, Usage};

    use super::*;

    fn chunk(delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: "chatcmpl-9".into(),
            created: 5,
            model: "m".into(),
            choices: vec![ChunkChoice {
                delta: Some(delta),
                finish_reason: finish.map(str::to_owned),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_event_sequence_of_reasoning_text_and_a_call() {
        let mut s = ResponsesStream::new(serde_json::Map::new());
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
                    content: Some("Hi".into()),
                    ..Default::default()
                },
                None,
            ),
            chunk(
                Delta {
                    tool_calls: vec![ToolCallDelta {
                        index: 0,
                        id: Some("call_1".into()),
                        name: Some("f".into()),
                        arguments: Some("{\"a\":".into()),
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
                        arguments: Some("1}".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                None,
            ),
            chunk(Delta::default(), Some("tool_calls")),
            ChatChunk {
                id: "chatcmpl-9".into(),
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    total_tokens: 5,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ] {
            events.extend(s.on_chunk(&c));
        }
        events.extend(s.on_end());
        let kinds: Vec<_> = events.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let numbers: Vec<_> = events
            .iter()
            .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["id"], "resp_9");
        assert_eq!(done["output"].as_array().unwrap().len(), 3);
        assert_eq!(done["output"][2]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["total_tokens"], 5);
    }

    #[test]
    fn a_cut_answer_ends_incomplete_and_a_failure_fails() {
        let mut s = ResponsesStream::new(serde_json::Map::new());
        s.on_chunk(&chunk(
            Delta {
                content: Some("a".into()),
                ..Default::default()
            },
            Some("length"),
        ));
        let end = s.on_end();
        assert_eq!(end.last().unwrap().0, "response.incomplete");
        assert_eq!(
            end.last().unwrap().1["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        let failed = s.on_error(&ApiError::new(tollgate::error::ErrorKind::Upstream, "boom"));
        assert_eq!(failed[0].1["response"]["error"]["message"], "boom");
    }
}
