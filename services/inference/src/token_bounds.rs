//! Token counts without a tokenizer: the upper bounds a request's cost is reserved at before the
//! upstream call, and the estimate billed when an upstream never reports its own count.
//!
//! **Prompt bound.** Every tokenizer the gateway fronts (byte-level BPE: OpenAI, DeepSeek;
//! SentencePiece with byte fallback) spends at least one byte of UTF-8 text per token, so the
//! request's text bytes bound its text tokens. The bytes are measured as the protobuf encoding of
//! the whole request (every message, tool definition, schema and parameter: strings are encoded
//! as their raw bytes plus a few bytes of framing, so this is never below the text), minus the
//! bytes of image URLs, which are not tokenised as text. Added to that: each image at the model's
//! `image_tokens_max` (a catalogue setting: 4,096 unless the model says otherwise, above the
//! patch-priced models' largest charge for one image, OpenAI's near 2,500, Anthropic's near 1,600,
//! Gemini's 258; tile-priced models such as gpt-4o-mini bill up to 48,169 and must say so),
//! [`MESSAGE_OVERHEAD_TOKENS`] per message for the chat template's role markers,
//! [`TOOLS_OVERHEAD_TOKENS`] when tools or a response schema are declared (the preamble providers
//! insert), and [`REQUEST_OVERHEAD_TOKENS`]. The sum is capped at the model's context length,
//! which no upstream exceeds.
//!
//! A request carrying its client's native body (`ChatRequest.native`) is measured without it:
//! the translated fields hold the same conversation.
//!
//! **Completion bound.** `max_completion_tokens`, else `max_tokens`, else the model's
//! `max_output_tokens`, times `n` (each choice is generated and billed).
//!
//! **Estimate.** When a request ends without the upstream's final count, the gateway bills
//! `ceil(bytes / 4)` of what it saw generated (content, reasoning, refusals, tool-call names and
//! arguments), and `ceil(bytes / 4)` of the prompt's text bytes: the usual four bytes per token of
//! English text. What the upstream did report before it stopped (a partial count, such as the
//! prompt side of Anthropic's `message_start`) is kept where it says more. The ledger row is
//! marked `estimated`.

use prost::Message as _;
use tollgate::v1::{
    ChatChunk, ChatRequest, ChatResponse, ResolvedModel, Usage, content_part, message,
};

/// Chat-template tokens per message (role markers, separators).
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 16;
/// Tokens of the preamble a provider inserts for tool definitions or a response schema.
pub const TOOLS_OVERHEAD_TOKENS: u64 = 1_024;
/// Tokens of the template around the whole conversation.
pub const REQUEST_OVERHEAD_TOKENS: u64 = 64;
/// Bytes per token of the estimate.
const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

/// What a request may consume at most, and what is known of its prompt for an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBounds {
    pub max_prompt_tokens: u64,
    pub max_completion_tokens: u64,
    /// UTF-8 bytes of the prompt's text (images excluded).
    pub prompt_text_bytes: u64,
}

/// The bounds of `request` on `route`'s model.
pub fn bounds(request: &ChatRequest, route: &ResolvedModel) -> TokenBounds {
    let mut image_url_bytes = 0u64;
    let mut images = 0u64;
    for m in &request.messages {
        if let Some(message::Content::Parts(parts)) = &m.content {
            for part in &parts.parts {
                if let Some(content_part::Part::ImageUrl(image)) = &part.part {
                    images += 1;
                    image_url_bytes += image.encoded_len() as u64;
                }
            }
        }
    }
    // A native body (the client's own Anthropic request) repeats what the fields above carry.
    // Its field number in `ChatRequest` (inference.proto), for the size of its tag.
    const NATIVE_FIELD: u32 = 27;
    let native_bytes = request.native.as_ref().map_or(0, |n| {
        prost::encoding::message::encoded_len(NATIVE_FIELD, n) as u64
    });
    let text_bytes = (request.encoded_len() as u64)
        .saturating_sub(image_url_bytes)
        .saturating_sub(native_bytes);
    let messages = request.messages.len() as u64;
    let declares_schema = !request.tools.is_empty()
        || request
            .response_format
            .as_ref()
            .is_some_and(|f| f.json_schema.is_some());
    let prompt = text_bytes
        .saturating_add(images.saturating_mul(route.image_tokens_max))
        .saturating_add(messages.saturating_mul(MESSAGE_OVERHEAD_TOKENS))
        .saturating_add(if declares_schema {
            TOOLS_OVERHEAD_TOKENS
        } else {
            0
        })
        .saturating_add(REQUEST_OVERHEAD_TOKENS);
    let max_prompt_tokens = if route.context_length > 0 {
        prompt.min(route.context_length)
    } else {
        prompt
    };
    let per_choice = request
        .max_completion_tokens
        .or(request.max_tokens)
        .map_or(route.max_output_tokens, u64::from);
    let choices = u64::from(request.n.unwrap_or(1).max(1));
    TokenBounds {
        max_prompt_tokens,
        max_completion_tokens: per_choice.saturating_mul(choices),
        prompt_text_bytes: text_bytes,
    }
}

/// UTF-8 bytes of the generated text a chunk carries.
pub fn generated_bytes(chunk: &ChatChunk) -> u64 {
    let mut bytes = 0usize;
    for choice in &chunk.choices {
        let Some(delta) = &choice.delta else { continue };
        bytes += delta.content.as_deref().map_or(0, str::len);
        bytes += delta.reasoning_content.as_deref().map_or(0, str::len);
        bytes += delta.refusal.as_deref().map_or(0, str::len);
        for call in &delta.tool_calls {
            bytes += call.name.as_deref().map_or(0, str::len);
            bytes += call.arguments.as_deref().map_or(0, str::len);
        }
    }
    bytes as u64
}

/// UTF-8 bytes of the generated text of a whole (non-streamed) answer.
pub fn answer_bytes(response: &ChatResponse) -> u64 {
    let mut bytes = 0usize;
    for message in response.choices.iter().filter_map(|c| c.message.as_ref()) {
        match &message.content {
            Some(message::Content::Text(text)) => bytes += text.len(),
            Some(message::Content::Parts(parts)) => {
                for part in &parts.parts {
                    if let Some(content_part::Part::Text(text)) = &part.part {
                        bytes += text.len();
                    }
                }
            }
            None => {}
        }
        bytes += message.reasoning_content.as_deref().map_or(0, str::len);
        bytes += message.refusal.as_deref().map_or(0, str::len);
        for call in message
            .tool_calls
            .iter()
            .filter_map(|c| c.function.as_ref())
        {
            bytes += call.name.len() + call.arguments.len();
        }
    }
    bytes as u64
}

/// The upstream's count when it is possible at all, else `None` (logged): a count above
/// `i64::MAX` (no ledger holds it; no model generates it), more cached or cache-written prompt
/// tokens than prompt tokens, or more reasoning tokens than completion tokens. Such a request is
/// billed at the gateway's [`estimate`], marked, as if the upstream had sent no count: never
/// refused unbilled, never at a number the upstream made up.
pub fn plausible(usage: Option<Usage>, request_id: &str) -> Option<Usage> {
    let usage = usage?;
    let counts = [
        usage.prompt_tokens,
        usage.cached_prompt_tokens,
        usage.cache_write_tokens,
        usage.completion_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
    ];
    let possible = counts.iter().all(|&n| i64::try_from(n).is_ok())
        && usage
            .cached_prompt_tokens
            .saturating_add(usage.cache_write_tokens)
            <= usage.prompt_tokens
        && usage.reasoning_tokens <= usage.completion_tokens;
    if possible {
        return Some(usage);
    }
    tracing::warn!(
        request_id,
        prompt_tokens = usage.prompt_tokens,
        cached_prompt_tokens = usage.cached_prompt_tokens,
        cache_write_tokens = usage.cache_write_tokens,
        completion_tokens = usage.completion_tokens,
        reasoning_tokens = usage.reasoning_tokens,
        "the upstream reported an impossible usage; billing the gateway's estimate instead"
    );
    None
}

/// The estimated usage of a request whose upstream never gave its final count: `ceil(bytes / 4)`
/// of the prompt's text and of the generated text, over what the upstream did report before it
/// stopped (`reported`): its prompt side where it has one (a real count, cache split included),
/// and the larger of its completion count and the estimate (Anthropic's `message_start` announces
/// a placeholder of 1 output token).
pub fn estimate(reported: Option<Usage>, prompt_text_bytes: u64, generated_bytes: u64) -> Usage {
    let mut usage = reported.unwrap_or_default();
    if usage.prompt_tokens == 0 {
        usage.prompt_tokens = prompt_text_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN);
    }
    usage.completion_tokens = usage
        .completion_tokens
        .max(generated_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN));
    usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    usage.cost_picodollars = None;
    usage
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tollgate::v1::{ContentPart, ContentParts, ImageUrl, Message, Role};

    use super::*;

    fn route() -> ResolvedModel {
        ResolvedModel {
            context_length: 1_000_000,
            max_output_tokens: 8_192,
            image_tokens_max: 4_096,
            ..Default::default()
        }
    }

    fn user(text: &str) -> Message {
        Message {
            role: Role::User as i32,
            content: Some(message::Content::Text(text.to_owned())),
            ..Default::default()
        }
    }

    #[test]
    fn prompt_bound_covers_the_text_bytes_and_overheads() {
        let text = "héllo wörld ".repeat(100);
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![user(&text), user("second")],
            ..Default::default()
        };
        let b = bounds(&request, &route());
        let floor = (text.len() + "second".len()) as u64
            + 2 * MESSAGE_OVERHEAD_TOKENS
            + REQUEST_OVERHEAD_TOKENS;
        assert!(b.max_prompt_tokens >= floor, "{b:?} < {floor}");
        // Framing adds only a few bytes per field.
        assert!(b.max_prompt_tokens < floor + 32, "{b:?}");
        assert_eq!(b.max_completion_tokens, 8_192);
    }

    #[test]
    fn images_count_a_fixed_amount_not_their_url_bytes() {
        let image = ContentPart {
            part: Some(content_part::Part::ImageUrl(ImageUrl {
                url: format!("data:image/png;base64,{}", "A".repeat(100_000)),
                detail: None,
            })),
        };
        let request = ChatRequest {
            messages: vec![Message {
                role: Role::User as i32,
                content: Some(message::Content::Parts(ContentParts { parts: vec![image] })),
                ..Default::default()
            }],
            ..Default::default()
        };
        let b = bounds(&request, &route());
        assert!(b.max_prompt_tokens >= 4_096);
        assert!(b.max_prompt_tokens < 4_096 + 200, "{b:?}");
        // The per-image worst case is the model's.
        let tiled = ResolvedModel {
            image_tokens_max: 48_169,
            ..route()
        };
        let b = bounds(&request, &tiled);
        assert!(b.max_prompt_tokens >= 48_169);
        assert!(b.max_prompt_tokens < 48_169 + 200, "{b:?}");
    }

    #[test]
    fn completion_bound_prefers_max_completion_tokens_and_multiplies_by_n() {
        let mut request = ChatRequest {
            messages: vec![user("hi")],
            max_tokens: Some(50),
            ..Default::default()
        };
        assert_eq!(bounds(&request, &route()).max_completion_tokens, 50);
        request.max_completion_tokens = Some(20);
        request.n = Some(3);
        assert_eq!(bounds(&request, &route()).max_completion_tokens, 60);
    }

    #[test]
    fn prompt_bound_stops_at_the_context_length() {
        let request = ChatRequest {
            messages: vec![user(&"x".repeat(5_000))],
            ..Default::default()
        };
        let small = ResolvedModel {
            context_length: 1_000,
            ..route()
        };
        assert_eq!(bounds(&request, &small).max_prompt_tokens, 1_000);
    }

    #[test]
    fn estimates_round_up_four_bytes_per_token() {
        let u = estimate(None, 9, 8);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (3, 2, 5)
        );
        assert_eq!(estimate(None, 0, 0).total_tokens, 0);
    }

    #[test]
    fn an_estimate_keeps_the_upstreams_partial_count_where_it_says_more() {
        // Anthropic's message_start: the real prompt side, a placeholder of 1 output token.
        let partial = Usage {
            prompt_tokens: 11,
            cached_prompt_tokens: 3,
            completion_tokens: 1,
            total_tokens: 12,
            ..Default::default()
        };
        let u = estimate(Some(partial), 400, 17);
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_prompt_tokens,
                u.completion_tokens,
                u.total_tokens
            ),
            (11, 3, 5, 16)
        );
        // A cumulative count above the estimate stays.
        let gemini = Usage {
            prompt_tokens: 7,
            completion_tokens: 40,
            ..Default::default()
        };
        assert_eq!(estimate(Some(gemini), 400, 17).completion_tokens, 40);
    }

    #[test]
    fn impossible_counts_are_not_trusted() {
        let fine = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            cache_write_tokens: 6,
            completion_tokens: 5,
            reasoning_tokens: 5,
            total_tokens: 15,
            ..Default::default()
        };
        assert_eq!(plausible(Some(fine), "r"), Some(fine));
        assert_eq!(plausible(None, "r"), None);
        for broken in [
            Usage {
                completion_tokens: u64::MAX,
                ..fine
            },
            Usage {
                prompt_tokens: 1 << 63,
                ..fine
            },
            Usage {
                cache_write_tokens: 7,
                ..fine
            },
            Usage {
                reasoning_tokens: 6,
                ..fine
            },
        ] {
            assert_eq!(plausible(Some(broken), "r"), None, "{broken:?}");
        }
    }
}
