//! The reply bodies, copied from the shapes the real APIs send (providers.md fixtures OA-1, OA-3,
//! OA-4 for OpenAI; DS-1, DS-2, DS-3 for DeepSeek): the whole `chat.completion` and the list of
//! `chat.completion.chunk` objects of a stream. MiniMax's and the quirky compatible server's
//! replies are built in `minimax.rs` and `compatible.rs` from the pieces shared here.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use super::request::{Answer, ChatPlan, Flavour, TOOL_ARGUMENT_FRAGMENTS, TOOL_CALL_ID};

const OPENAI_FINGERPRINT: &str = "fp_mock0001";
const DEEPSEEK_FINGERPRINT: &str = "fp_mock_prod0820_fp8_kvcache";

/// The id and timestamp shared by every chunk of one reply.
#[derive(Debug, Clone)]
pub struct ReplyIdentity {
    pub id: String,
    pub created: u64,
}

impl ReplyIdentity {
    /// OpenAI ids are `chatcmpl-…`; DeepSeek ids are bare UUID-shaped strings. Unique within a
    /// process (a counter) and across runs (the clock).
    pub fn new(flavour: Flavour) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hex = format!("{:016x}{:016x}", now.as_nanos() as u64, seq);
        let id = match flavour {
            Flavour::OpenAi => format!("chatcmpl-mock{hex}"),
            Flavour::Compatible => format!("chatcmpl-compat{hex}"),
            Flavour::MiniMax => hex,
            Flavour::DeepSeek => format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ),
        };
        Self {
            id,
            created: now.as_secs(),
        }
    }
}

/// The script of a stream: its chunks, and where an in-band error replaces the rest.
#[derive(Debug, Clone)]
pub struct StreamScript {
    pub chunks: Vec<Value>,
    /// With `[stream_error]`: the index of the first chunk that is never sent.
    pub fail_at: Option<usize>,
    /// The in-band event sent instead of that chunk.
    pub fail_body: Value,
    /// Open with an SSE comment and put blank lines between events (compatible servers).
    pub keep_alive_comments: bool,
    /// End with `data: [DONE]`.
    pub done: bool,
}

/// The in-band error a failing stream ends with.
pub fn stream_error_body() -> Value {
    json!({"error": {"message": "mock mid-stream failure", "type": "server_error", "param": null, "code": null}})
}

/// The `usage` object of an answer, in its flavour's shape (`[huge_usage]`: an impossible count).
pub(super) fn usage(plan: &ChatPlan) -> Value {
    let mut usage = flavour_usage(plan);
    if plan.huge_usage
        && let Some(obj) = usage.as_object_mut()
    {
        obj.insert("completion_tokens".to_owned(), json!(u64::MAX));
        obj.insert("total_tokens".to_owned(), json!(u64::MAX));
    }
    usage
}

fn flavour_usage(plan: &ChatPlan) -> Value {
    let total = plan.prompt_tokens + plan.completion_tokens;
    match plan.flavour {
        Flavour::OpenAi => json!({
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": plan.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        }),
        Flavour::DeepSeek => json!({
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
            "prompt_cache_hit_tokens": plan.cached_tokens,
            "prompt_cache_miss_tokens": plan.prompt_tokens - plan.cached_tokens
        }),
        // Documented fields only; cached tokens (unverified for MiniMax) only when there are some.
        Flavour::MiniMax => {
            let mut u = json!({
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": plan.completion_tokens,
                "total_tokens": total,
            });
            if plan.cached_tokens > 0
                && let Some(obj) = u.as_object_mut()
            {
                obj.insert(
                    "prompt_tokens_details".to_owned(),
                    json!({"cached_tokens": plan.cached_tokens}),
                );
            }
            u
        }
        Flavour::Compatible => json!({
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": total,
        }),
    }
}

pub(super) fn tool_call(name: &str, with_index: bool) -> Value {
    let mut call = json!({
        "id": TOOL_CALL_ID,
        "type": "function",
        "function": {"name": name, "arguments": TOOL_ARGUMENT_FRAGMENTS.concat()}
    });
    if with_index && let Some(obj) = call.as_object_mut() {
        // DeepSeek's non-streaming tool calls carry their index too.
        let mut indexed = serde_json::Map::new();
        indexed.insert("index".to_owned(), json!(0));
        indexed.extend(std::mem::take(obj));
        *obj = indexed;
    }
    call
}

/// The whole `chat.completion` for a non-streaming request.
pub fn completion(plan: &ChatPlan, ident: &ReplyIdentity) -> Value {
    match plan.flavour {
        Flavour::MiniMax => return super::minimax::completion(plan, ident),
        Flavour::Compatible => return super::compatible::completion(plan, ident),
        Flavour::OpenAi | Flavour::DeepSeek => {}
    }
    let message = match plan.flavour {
        Flavour::OpenAi => match &plan.answer {
            Answer::Text(words) => json!({
                "role": "assistant", "content": words.concat(), "refusal": null, "annotations": []
            }),
            Answer::ToolCall { name } => json!({
                "role": "assistant", "content": null, "tool_calls": [tool_call(name, false)],
                "refusal": null, "annotations": []
            }),
        },
        _ => {
            let mut m = json!({"role": "assistant"});
            let content = match &plan.answer {
                Answer::Text(words) => json!(words.concat()),
                Answer::ToolCall { .. } => Value::Null,
            };
            if let Some(obj) = m.as_object_mut() {
                obj.insert("content".to_owned(), content);
                if let Some(reasoning) = &plan.reasoning {
                    obj.insert("reasoning_content".to_owned(), json!(reasoning.concat()));
                }
                if let Answer::ToolCall { name } = &plan.answer {
                    obj.insert("tool_calls".to_owned(), json!([tool_call(name, true)]));
                }
            }
            m
        }
    };
    let mut body = json!({
        "id": ident.id,
        "object": "chat.completion",
        "created": ident.created,
        "model": plan.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": plan.finish_reason}],
        "usage": usage(plan),
    });
    if let Some(obj) = body.as_object_mut() {
        if plan.no_usage {
            obj.remove("usage");
        }
        match plan.flavour {
            Flavour::OpenAi => {
                obj.insert("service_tier".to_owned(), json!("default"));
                obj.insert("system_fingerprint".to_owned(), json!(OPENAI_FINGERPRINT));
            }
            _ => {
                obj.insert("system_fingerprint".to_owned(), json!(DEEPSEEK_FINGERPRINT));
            }
        }
    }
    body
}

/// Builds the chunks of one stream with the envelope its flavour uses.
pub(super) struct ChunkWriter<'a> {
    plan: &'a ChatPlan,
    ident: &'a ReplyIdentity,
    pub chunks: Vec<Value>,
}

impl<'a> ChunkWriter<'a> {
    pub fn new(plan: &'a ChatPlan, ident: &'a ReplyIdentity) -> Self {
        Self {
            plan,
            ident,
            chunks: Vec::new(),
        }
    }

    pub fn envelope(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.ident.id,
            "object": "chat.completion.chunk",
            "created": self.ident.created,
            "model": self.plan.model,
        });
        if let Some(obj) = chunk.as_object_mut() {
            match self.plan.flavour {
                Flavour::OpenAi => {
                    obj.insert("service_tier".to_owned(), json!("default"));
                    obj.insert("system_fingerprint".to_owned(), json!(OPENAI_FINGERPRINT));
                }
                Flavour::DeepSeek => {
                    obj.insert("system_fingerprint".to_owned(), json!(DEEPSEEK_FINGERPRINT));
                }
                Flavour::MiniMax | Flavour::Compatible => {}
            }
            obj.insert("choices".to_owned(), choices);
        }
        chunk
    }

    pub fn push_delta(&mut self, delta: Value, finish_reason: Option<&str>) {
        let mut chunk = self.envelope(json!([
            {"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}
        ]));
        if let Some(obj) = chunk.as_object_mut() {
            match self.plan.flavour {
                // OpenAI: with include_usage every chunk but the last carries `"usage": null`.
                Flavour::OpenAi if self.plan.include_usage => {
                    obj.insert("usage".to_owned(), Value::Null);
                }
                // DeepSeek: usage rides on the finish chunk, whatever the request asked.
                Flavour::DeepSeek if finish_reason.is_some() => {
                    obj.insert("usage".to_owned(), usage(self.plan));
                }
                _ => {}
            }
        }
        self.chunks.push(chunk);
    }
}

/// The chunks of a streamed reply, `[DONE]` excluded.
pub fn stream(plan: &ChatPlan, ident: &ReplyIdentity) -> StreamScript {
    match plan.flavour {
        Flavour::MiniMax => return super::minimax::stream(plan, ident),
        Flavour::Compatible => return super::compatible::stream(plan, ident),
        Flavour::OpenAi | Flavour::DeepSeek => {}
    }
    let mut w = ChunkWriter::new(plan, ident);
    let thinking = plan.reasoning.is_some();
    let deepseek = plan.flavour == Flavour::DeepSeek;

    // The opening chunk.
    match (&plan.answer, plan.flavour) {
        (Answer::ToolCall { name }, Flavour::OpenAi) => w.push_delta(
            json!({"role": "assistant", "content": null, "tool_calls": [opening_fragment(name)], "refusal": null}),
            None,
        ),
        (Answer::Text(_), Flavour::OpenAi) => w.push_delta(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        (_, Flavour::DeepSeek) if thinking => w.push_delta(
            json!({"role": "assistant", "content": null, "reasoning_content": ""}),
            None,
        ),
        _ => w.push_delta(json!({"role": "assistant", "content": ""}), None),
    }
    for piece in plan.reasoning.iter().flatten() {
        w.push_delta(json!({"content": null, "reasoning_content": piece}), None);
    }

    let first_content = w.chunks.len();
    let content_count = match &plan.answer {
        Answer::Text(words) => {
            for word in words {
                if thinking {
                    w.push_delta(json!({"content": word, "reasoning_content": null}), None);
                } else {
                    w.push_delta(json!({"content": word}), None);
                }
            }
            words.len()
        }
        Answer::ToolCall { name } => {
            if deepseek {
                w.push_delta(json!({"tool_calls": [opening_fragment(name)]}), None);
            }
            for fragment in TOOL_ARGUMENT_FRAGMENTS {
                w.push_delta(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                    None,
                );
            }
            TOOL_ARGUMENT_FRAGMENTS.len() + usize::from(deepseek)
        }
    };
    let fail_at = plan
        .stream_error
        .then_some(first_content + content_count.min(2));

    // The finish chunk; OpenAI then sends usage on its own, only when asked to.
    let finish_delta = match (deepseek, thinking) {
        (false, _) => json!({}),
        (true, false) => json!({"content": ""}),
        (true, true) => json!({"content": "", "reasoning_content": null}),
    };
    w.push_delta(finish_delta, Some(&plan.finish_reason));
    if plan.flavour == Flavour::OpenAi && plan.include_usage {
        let mut chunk = w.envelope(json!([]));
        if let Some(obj) = chunk.as_object_mut() {
            obj.insert("usage".to_owned(), usage(plan));
        }
        w.chunks.push(chunk);
    }
    StreamScript {
        chunks: w.chunks,
        fail_at,
        fail_body: stream_error_body(),
        keep_alive_comments: false,
        done: true,
    }
}

pub(super) fn opening_fragment(name: &str) -> Value {
    json!({"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": ""}})
}
