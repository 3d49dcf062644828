//! OpenAI itself (`kind = "openai"`). Sends `max_completion_tokens` (the only limit reasoning
//! models accept; every current model takes it), passes through the fields only OpenAI knows,
//! and strips `reasoning_content`, which OpenAI does not accept on input messages. Thinking is
//! expressed by the caller's `reasoning_effort`, which passes through.

use tollgate::openai::ChatCompletionRequest;

use super::{Target, openai_wire::Dialect};

#[derive(Debug)]
pub struct OpenAi;

impl Dialect for OpenAi {
    fn prepare(body: &mut ChatCompletionRequest, _target: &Target<'_>) {
        if body.max_completion_tokens.is_none() {
            body.max_completion_tokens = body.max_tokens.take();
        }
        body.max_tokens = None;
        for message in &mut body.messages {
            message.reasoning_content = None;
        }
    }
}
