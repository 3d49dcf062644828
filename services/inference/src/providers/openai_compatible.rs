//! Any OpenAI-compatible server (`kind = "openai-compatible"`: vLLM, Ollama, llama.cpp,
//! OpenRouter, ...). Many of them reject roles and fields only OpenAI knows, so `developer`
//! becomes `system`, OpenAI-only fields are dropped and input `reasoning_content` is removed.
//! Their answers are parsed defensively by the shared OpenAI wire (providers.md section 6), and
//! a leading `<think>…</think>` in the content (reasoning models served without a reasoning
//! parser) is moved to `reasoning_content`. Their reasoning is not round-tripped: no
//! `reasoning_details` are kept for them, as these servers document no way to take it back.

use tollgate::openai::ChatCompletionRequest;

use super::{Target, openai_wire::Dialect};
use crate::UpstreamError;

/// Request fields only OpenAI's own API accepts.
pub(super) const OPENAI_ONLY_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prediction",
    "verbosity",
    "modalities",
    "audio",
    "web_search_options",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
];

#[derive(Debug)]
pub struct OpenAiCompatible;

impl Dialect for OpenAiCompatible {
    const INLINE_THINK_TAGS: bool = true;

    fn prepare(
        body: &mut ChatCompletionRequest,
        _target: &Target<'_>,
    ) -> Result<(), UpstreamError> {
        for message in &mut body.messages {
            message.reasoning_content = None;
        }
        body.extra
            .retain(|k, _| !OPENAI_ONLY_FIELDS.contains(&k.as_str()));
        Ok(())
    }
}
