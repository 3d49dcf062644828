//! OpenAI itself (`kind = "openai"`). Sends `max_completion_tokens` (the only limit reasoning
//! models accept; every current model takes it), passes through the fields only OpenAI knows,
//! and strips `reasoning_content`, which OpenAI does not accept on input messages.

use tollgate::{
    openai::UsageJson,
    v1::{ChatRequest, ChatResponse},
};

use super::{
    ChatProvider, ChunkStream, Target,
    openai_wire::{self, OpenAiWire},
};
use crate::UpstreamError;

#[derive(Debug)]
pub struct OpenAi {
    pub(super) wire: OpenAiWire,
}

impl OpenAi {
    pub fn new(wire: OpenAiWire) -> Self {
        Self { wire }
    }

    fn body(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<serde_json::Value, UpstreamError> {
        let mut body = openai_wire::request_body(request, target)?;
        if body.max_completion_tokens.is_none() {
            body.max_completion_tokens = body.max_tokens.take();
        }
        body.max_tokens = None;
        for message in &mut body.messages {
            message.reasoning_content = None;
        }
        Ok(body.to_json())
    }
}

impl ChatProvider for OpenAi {
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
