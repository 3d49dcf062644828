//! Any OpenAI-compatible server (`kind = "openai-compatible"`: vLLM, Ollama, llama.cpp,
//! OpenRouter, ...). Many of them reject roles and fields only OpenAI knows, so `developer`
//! becomes `system`, OpenAI-only fields are dropped and input `reasoning_content` is removed.

use tollgate::openai::{ChatCompletionRequest, RoleJson};

use super::{Target, openai_wire::Dialect};

/// Request fields only OpenAI's own API accepts.
const OPENAI_ONLY_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prediction",
    "verbosity",
];

#[derive(Debug)]
pub struct OpenAiCompatible;

impl Dialect for OpenAiCompatible {
    fn prepare(body: &mut ChatCompletionRequest, _target: &Target<'_>) {
        for message in &mut body.messages {
            if message.role == RoleJson::Developer {
                message.role = RoleJson::System;
            }
            message.reasoning_content = None;
        }
        body.extra
            .retain(|k, _| !OPENAI_ONLY_FIELDS.contains(&k.as_str()));
    }
}
