//! OpenAI itself (`kind = "openai"`). Sends `max_completion_tokens` (the only limit reasoning
//! models accept; every current model takes it), passes through the fields only OpenAI knows
//! (`logit_bias`, `metadata`, `store`, `service_tier`, `prediction`, `verbosity`, `modalities`,
//! ...: whatever the request carried beyond the common fields), and strips `reasoning_content`,
//! which OpenAI does not accept on input messages. Thinking is rendered as `reasoning_effort`:
//! the decided effort when on, `none` when switched off, nothing when nobody asked.
//!
//! Which models are reasoning models (o1, o3, o4-mini, gpt-5, ...) is read from the model's
//! configuration, not guessed from its name: a model configured with `thinking = "always"` or
//! `"optional"` is one. Those reject `stop` ("not supported with latest reasoning models o3 and
//! o4-mini"), `presence_penalty`, `frequency_penalty`, `logprobs` and `top_logprobs` (OpenAI's
//! 400 `unsupported_parameter`), so a request with any of them for such a model is refused
//! before admission with a 400 naming the field, rather than sent to fail upstream or silently
//! dropped (dropping would change the answer).

use tollgate::{
    openai::{ChatCompletionRequest, ReasoningEffortJson},
    v1::{ChatRequest, ThinkingSupport},
};

use super::{Target, openai_wire::Dialect};
use crate::{UpstreamError, thinking::Thinking};

#[derive(Debug)]
pub struct OpenAi;

/// Whether the routed model is configured as a reasoning model.
fn is_reasoning_model(target: &Target<'_>) -> bool {
    matches!(
        target.route.thinking(),
        ThinkingSupport::Always | ThinkingSupport::Optional
    )
}

/// The fields OpenAI's reasoning models refuse, with whether the request sets them.
fn reasoning_model_refusals(request: &ChatRequest) -> [(&'static str, bool); 5] {
    [
        ("stop", !request.stop.is_empty()),
        ("presence_penalty", request.presence_penalty.is_some()),
        ("frequency_penalty", request.frequency_penalty.is_some()),
        ("logprobs", request.logprobs.is_some()),
        ("top_logprobs", request.top_logprobs.is_some()),
    ]
}

impl Dialect for OpenAi {
    const DEVELOPER_ROLE: bool = true;
    const MAX_COMPLETION_TOKENS: bool = true;

    fn check(request: &ChatRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        if !is_reasoning_model(target) {
            return Ok(());
        }
        match reasoning_model_refusals(request)
            .into_iter()
            .find(|(_, set)| *set)
        {
            Some((field, _)) => Err(UpstreamError::unsupported(
                field,
                format!(
                    "{field} is not supported by the reasoning model {}",
                    target.route.requested_id
                ),
            )),
            None => Ok(()),
        }
    }

    fn prepare(body: &mut ChatCompletionRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        if body.max_completion_tokens.is_none() {
            body.max_completion_tokens = body.max_tokens.take();
        }
        body.max_tokens = None;
        for message in &mut body.messages {
            message.reasoning_content = None;
        }
        if target.thinking == Thinking::Off {
            body.reasoning_effort = Some(ReasoningEffortJson::None);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tollgate::v1::ResolvedModel;

    use super::*;

    fn prepared(
        thinking: ThinkingSupport,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, UpstreamError> {
        let route = ResolvedModel {
            requested_id: "o4-mini".into(),
            upstream_model: "o4-mini".into(),
            thinking: thinking.into(),
            ..Default::default()
        };
        let target = Target {
            route: &route,
            thinking: Thinking::Default { thinks: false },
        };
        let request: ChatRequest = ChatCompletionRequest::from_json(body)
            .unwrap()
            .into_proto()
            .unwrap();
        OpenAi::check(&request, &target)?;
        let mut body = ChatCompletionRequest::from_proto(&request).unwrap();
        OpenAi::prepare(&mut body, &target)?;
        Ok(body.to_json())
    }

    #[test]
    fn max_tokens_becomes_max_completion_tokens() {
        let body = prepared(
            ThinkingSupport::None,
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":7}),
        )
        .unwrap();
        assert_eq!(body["max_completion_tokens"], 7);
        assert!(body.get("max_tokens").is_none());
    }

    #[test]
    fn penalties_and_logprobs_are_refused_for_reasoning_models_only() {
        for (field, value) in [
            ("presence_penalty", serde_json::json!(0.5)),
            ("frequency_penalty", serde_json::json!(-0.5)),
            ("logprobs", serde_json::json!(true)),
            ("top_logprobs", serde_json::json!(2)),
        ] {
            let mut body =
                serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
            body[field] = value.clone();
            let e = prepared(ThinkingSupport::Always, body.clone()).unwrap_err();
            assert_eq!(e.to_api_error().param.as_deref(), Some(field));
            assert!(prepared(ThinkingSupport::Optional, body.clone()).is_err());
            assert_eq!(prepared(ThinkingSupport::None, body).unwrap()[field], value);
        }
    }

    #[test]
    fn thinking_off_is_sent_as_reasoning_effort_none() {
        let route = ResolvedModel {
            thinking: ThinkingSupport::Optional.into(),
            ..Default::default()
        };
        let mut body = ChatCompletionRequest::from_json(
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
        )
        .unwrap();
        let target = Target {
            route: &route,
            thinking: Thinking::Off,
        };
        OpenAi::prepare(&mut body, &target).unwrap();
        assert_eq!(body.to_json()["reasoning_effort"], "none");
    }

    #[test]
    fn stop_is_refused_for_reasoning_models_only() {
        let with_stop = serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"END"});
        let e = prepared(ThinkingSupport::Always, with_stop.clone()).unwrap_err();
        assert_eq!(e.to_api_error().param.as_deref(), Some("stop"));
        let e = prepared(ThinkingSupport::Optional, with_stop.clone()).unwrap_err();
        assert_eq!(e.to_api_error().param.as_deref(), Some("stop"));
        let body = prepared(ThinkingSupport::None, with_stop).unwrap();
        assert_eq!(body["stop"], serde_json::json!(["END"]));
    }

    #[test]
    fn openai_only_fields_pass_through() {
        let body = prepared(
            ThinkingSupport::Always,
            serde_json::json!({"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"hi"}],
                "store":true,"metadata":{"k":"v"},"service_tier":"flex","logit_bias":{"50256":-100},
                "prediction":{"type":"content","content":"x"},"verbosity":"low","reasoning_effort":"high"}),
        )
        .unwrap();
        for field in [
            "store",
            "metadata",
            "service_tier",
            "logit_bias",
            "prediction",
            "verbosity",
            "reasoning_effort",
        ] {
            assert!(body.get(field).is_some(), "{field} was dropped");
        }
        assert_eq!(body["messages"][0]["role"], "developer");
    }
}
