//! Any OpenAI-compatible server (`kind = "openai-compatible"`: vLLM, Ollama, llama.cpp,
//! OpenRouter, ...). Many of them reject roles and fields only OpenAI knows, so `developer`
//! becomes `system`, OpenAI-only fields are dropped and input `reasoning_content` is removed.

use tollgate::{
    openai::{RoleJson, UsageJson},
    v1::{ChatRequest, ChatResponse},
};

use super::{
    ChatProvider, ChunkStream, Target,
    openai_wire::{self, OpenAiWire},
};
use crate::UpstreamError;

/// Request fields only OpenAI's own API accepts.
const OPENAI_ONLY_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prediction",
    "verbosity",
];

#[derive(Debug)]
pub struct OpenAiCompatible {
    pub(super) wire: OpenAiWire,
}

impl OpenAiCompatible {
    pub fn new(wire: OpenAiWire) -> Self {
        Self { wire }
    }

    fn body(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<serde_json::Value, UpstreamError> {
        let mut body = openai_wire::request_body(request, target)?;
        for message in &mut body.messages {
            if message.role == RoleJson::Developer {
                message.role = RoleJson::System;
            }
            message.reasoning_content = None;
        }
        body.extra
            .retain(|k, _| !OPENAI_ONLY_FIELDS.contains(&k.as_str()));
        Ok(body.to_json())
    }
}

impl ChatProvider for OpenAiCompatible {
    async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        self.wire
            .chat(self.body(request, target)?, UsageJson::to_proto)
            .await
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        self.wire
            .chat_stream(self.body(request, target)?, UsageJson::to_proto)
            .await
    }
}
