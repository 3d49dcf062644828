//! Request validation shared by every entry point (REST through the facade, gRPC directly): each
//! problem is a 400 that names the offending field, found before anything is sent upstream.

use tollgate::{
    error::ApiError,
    passthrough,
    v1::{
        ChatRequest, Message, ReasoningEffort, ResolvedModel, Role, content_part::Part,
        message::Content,
    },
};

/// OpenAI's limit on stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;

fn range(param: &str, value: Option<f64>, min: f64, max: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be between {min} and {max}, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// The pass-through fields of a request (`extra_json`), parsed once by [`request`] for every
/// later check.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Checks what can be checked without knowing the model; answers the parsed pass-through fields.
pub fn request(request: &ChatRequest) -> Result<Extra, ApiError> {
    if request.model.trim().is_empty() {
        return Err(ApiError::invalid_param("model", "model must not be empty"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must contain at least one message",
        ));
    }
    for (i, message) in request.messages.iter().enumerate() {
        let role = Role::try_from(message.role).unwrap_or(Role::Unspecified);
        let param = |field: &str| format!("messages[{i}].{field}");
        match role {
            Role::Unspecified => {
                return Err(ApiError::invalid_param(
                    param("role"),
                    format!(
                        "{} must be one of system, developer, user, assistant, tool",
                        param("role")
                    ),
                ));
            }
            Role::Tool if message.tool_call_id.as_deref().is_none_or(str::is_empty) => {
                return Err(ApiError::invalid_param(
                    param("tool_call_id"),
                    format!("{} is required on tool messages", param("tool_call_id")),
                ));
            }
            Role::Assistant if message.content.is_none() && message.tool_calls.is_empty() => {
                return Err(ApiError::invalid_param(
                    param("content"),
                    format!(
                        "{} is required unless the assistant message has tool_calls",
                        param("content")
                    ),
                ));
            }
            Role::Assistant => {}
            _ if message.content.is_none() => {
                return Err(ApiError::invalid_param(
                    param("content"),
                    format!("{} is required", param("content")),
                ));
            }
            _ => {}
        }
        if let Some(Content::Parts(parts)) = &message.content
            && parts.parts.is_empty()
        {
            return Err(ApiError::invalid_param(
                param("content"),
                format!("{} must not be an empty array", param("content")),
            ));
        }
    }
    tool_results_answer_calls(&request.messages)?;
    let extra = passthrough::parse_extra_json(&request.extra_json)?;
    passthrough::check_contract(&extra)?;
    let known_effort = |e: i32| {
        ReasoningEffort::try_from(e).is_ok_and(|effort| effort != ReasoningEffort::Unspecified)
    };
    if request.reasoning_effort.is_some_and(|e| !known_effort(e)) {
        return Err(ApiError::invalid_param(
            "reasoning_effort",
            "reasoning_effort must be one of none, minimal, low, medium, high, xhigh, max",
        ));
    }
    range("temperature", request.temperature, 0.0, 2.0)?;
    range("top_p", request.top_p, 0.0, 1.0)?;
    range("presence_penalty", request.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", request.frequency_penalty, -2.0, 2.0)?;
    if request.n == Some(0) {
        return Err(ApiError::invalid_param("n", "n must be at least 1"));
    }
    if request.stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid_param(
            "stop",
            format!("stop takes at most {MAX_STOP_SEQUENCES} sequences"),
        ));
    }
    if request.top_logprobs.is_some_and(|n| n > 20) {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs must be between 0 and 20",
        ));
    }
    if let Some(format) = &request.response_format {
        match format.r#type.as_str() {
            "text" | "json_object" => {}
            "json_schema" => {
                let named = format
                    .json_schema
                    .as_ref()
                    .is_some_and(|s| !s.name.is_empty());
                if !named {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema",
                        "response_format of type json_schema needs json_schema with a name and a schema",
                    ));
                }
            }
            other => {
                return Err(ApiError::invalid_param(
                    "response_format.type",
                    format!(
                        "response_format.type must be text, json_object or json_schema, got {other:?}"
                    ),
                ));
            }
        }
    }
    for (i, tool) in request.tools.iter().enumerate() {
        let name = tool.function.as_ref().map_or("", |f| f.name.as_str());
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].function.name"),
                format!("tools[{i}].function.name must match ^[a-zA-Z0-9_-]{{1,64}}$"),
            ));
        }
    }
    Ok(extra)
}

/// The calls of the assistant message being answered: its index and, per call not answered
/// yet, the call's index and id.
type OpenCalls<'a> = Option<(usize, Vec<(usize, &'a str)>)>;

/// Every tool message answers a call of the last assistant message before it, and every call is
/// answered before the next assistant message (or the end): every provider refuses a
/// conversation that breaks this, so it is refused here, naming the message. User or system
/// messages between the results are left to the provider: the Anthropic and Gemini adapters
/// merge them into the results' turn, OpenAI-protocol upstreams refuse them (their 400 is
/// relayed).
fn tool_results_answer_calls(messages: &[Message]) -> Result<(), ApiError> {
    let mut open: OpenCalls<'_> = None;
    for (i, message) in messages.iter().enumerate() {
        if message.role() == Role::Tool {
            let id = message.tool_call_id.as_deref().unwrap_or_default();
            let answered = open.as_mut().and_then(|(_, calls)| {
                let k = calls.iter().position(|(_, call)| *call == id)?;
                Some(calls.remove(k))
            });
            if answered.is_none() {
                let param = format!("messages[{i}].tool_call_id");
                return Err(ApiError::invalid_param(
                    &param,
                    format!(
                        "{param} ({id}) answers no tool call of the assistant message before it: \
                         tool messages must follow the assistant message whose tool_calls they \
                         answer"
                    ),
                ));
            }
            continue;
        }
        if message.role() != Role::Assistant {
            continue;
        }
        unanswered_call(&open)?;
        open = (!message.tool_calls.is_empty()).then(|| {
            let calls = message.tool_calls.iter().map(|c| c.id.as_str());
            (i, calls.enumerate().collect())
        });
    }
    unanswered_call(&open)
}

fn unanswered_call(open: &OpenCalls<'_>) -> Result<(), ApiError> {
    match open {
        Some((i, calls)) => match calls.first() {
            Some((j, id)) => {
                let param = format!("messages[{i}].tool_calls[{j}]");
                Err(ApiError::invalid_param(
                    &param,
                    format!(
                        "{param} (id {id}) has no tool message answering it: every tool call \
                         must be followed by a tool message with its tool_call_id"
                    ),
                ))
            }
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Checks the request against the model it resolved to; `extra` is what [`request`] answered.
pub fn for_model(
    request: &ChatRequest,
    model: &ResolvedModel,
    extra: &Extra,
) -> Result<(), ApiError> {
    passthrough::check_priced(extra, &model.requested_id, &model.passthrough_allow)?;
    for (param, value) in [
        ("max_tokens", request.max_tokens),
        ("max_completion_tokens", request.max_completion_tokens),
    ] {
        match value {
            Some(0) => {
                return Err(ApiError::invalid_param(
                    param,
                    format!("{param} must be at least 1"),
                ));
            }
            Some(v) if u64::from(v) > model.max_output_tokens => {
                return Err(ApiError::invalid_param(
                    param,
                    format!(
                        "{param} is too large: {v}. Model {} supports at most {} completion tokens",
                        model.requested_id, model.max_output_tokens
                    ),
                ));
            }
            _ => {}
        }
    }
    if !model.vision {
        for (i, message) in request.messages.iter().enumerate() {
            let Some(Content::Parts(parts)) = &message.content else {
                continue;
            };
            let image = parts
                .parts
                .iter()
                .position(|p| matches!(p.part, Some(Part::ImageUrl(_))));
            if let Some(j) = image {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].content[{j}]"),
                    format!(
                        "Model {} does not accept image inputs; send text only or choose a \
                         model with vision",
                        model.requested_id
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::v1::Message;

    fn extra(r: &ChatRequest) -> Extra {
        passthrough::parse_extra_json(&r.extra_json).unwrap()
    }

    fn valid() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: Role::User.into(),
                content: Some(Content::Text("hi".into())),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn param(r: &ChatRequest) -> Option<String> {
        request(r).err().and_then(|e| e.param)
    }

    #[test]
    fn each_problem_names_its_field() {
        assert_eq!(param(&valid()), None);
        let mut r = valid();
        r.model.clear();
        assert_eq!(param(&r).as_deref(), Some("model"));
        let mut r = valid();
        r.messages.clear();
        assert_eq!(param(&r).as_deref(), Some("messages"));
        let mut r = valid();
        r.temperature = Some(2.5);
        assert_eq!(param(&r).as_deref(), Some("temperature"));
        let mut r = valid();
        r.temperature = Some(2.0);
        assert_eq!(param(&r), None);
        let mut r = valid();
        r.messages[0].role = 0;
        assert_eq!(param(&r).as_deref(), Some("messages[0].role"));
        let mut r = valid();
        r.messages[0].role = Role::Tool.into();
        assert_eq!(param(&r).as_deref(), Some("messages[0].tool_call_id"));
        let mut r = valid();
        r.messages[0].content = None;
        assert_eq!(param(&r).as_deref(), Some("messages[0].content"));
        let mut r = valid();
        r.stop = vec!["a".into(); 5];
        assert_eq!(param(&r).as_deref(), Some("stop"));
        let mut r = valid();
        r.response_format = Some(tollgate::v1::ResponseFormat {
            r#type: "json_schema".into(),
            json_schema: None,
        });
        assert_eq!(param(&r).as_deref(), Some("response_format.json_schema"));
        let mut r = valid();
        r.response_format = Some(tollgate::v1::ResponseFormat {
            r#type: "yaml".into(),
            json_schema: None,
        });
        assert_eq!(param(&r).as_deref(), Some("response_format.type"));
    }

    #[test]
    fn reasoning_effort_must_be_a_known_effort() {
        let mut r = valid();
        r.reasoning_effort = Some(ReasoningEffort::High.into());
        assert_eq!(param(&r), None);
        for unknown in [0, 99] {
            r.reasoning_effort = Some(unknown);
            assert_eq!(param(&r).as_deref(), Some("reasoning_effort"));
        }
    }

    #[test]
    fn tool_messages_answer_the_calls_right_before_them() {
        use tollgate::v1::{FunctionCall, ToolCall};
        let user = |text: &str| Message {
            role: Role::User.into(),
            content: Some(Content::Text(text.into())),
            ..Default::default()
        };
        let calls = |ids: &[&str]| Message {
            role: Role::Assistant.into(),
            tool_calls: ids
                .iter()
                .map(|id| ToolCall {
                    id: (*id).into(),
                    r#type: "function".into(),
                    function: Some(FunctionCall {
                        name: "f".into(),
                        arguments: "{}".into(),
                    }),
                })
                .collect(),
            ..Default::default()
        };
        let answer = |id: &str| Message {
            role: Role::Tool.into(),
            content: Some(Content::Text("r".into())),
            tool_call_id: Some(id.into()),
            ..Default::default()
        };
        let check = |messages: Vec<Message>| {
            param(&ChatRequest {
                messages,
                ..valid()
            })
        };
        // Answered in any order, then the conversation goes on.
        let ok = vec![
            user("q"),
            calls(&["a", "b"]),
            answer("b"),
            answer("a"),
            user("more"),
        ];
        assert_eq!(check(ok), None);
        // A user message between the results is the provider's business.
        assert_eq!(
            check(vec![
                user("q"),
                calls(&["a", "b"]),
                answer("a"),
                user("and"),
                answer("b")
            ]),
            None
        );
        // A call left unanswered, at the end or before the next assistant message.
        assert_eq!(
            check(vec![user("q"), calls(&["a", "b"]), answer("a")]).as_deref(),
            Some("messages[1].tool_calls[1]")
        );
        let assistant = Message {
            role: Role::Assistant.into(),
            content: Some(Content::Text("done".into())),
            ..Default::default()
        };
        assert_eq!(
            check(vec![
                user("q"),
                calls(&["a"]),
                user("never mind"),
                assistant
            ])
            .as_deref(),
            Some("messages[1].tool_calls[0]")
        );
        // A tool message with nothing to answer, or answering another id.
        assert_eq!(
            check(vec![user("q"), answer("a")]).as_deref(),
            Some("messages[1].tool_call_id")
        );
        assert_eq!(
            check(vec![user("q"), calls(&["a"]), answer("x")]).as_deref(),
            Some("messages[2].tool_call_id")
        );
    }

    #[test]
    fn max_tokens_is_bounded_by_the_model() {
        let model = ResolvedModel {
            requested_id: "m".into(),
            max_output_tokens: 100,
            ..Default::default()
        };
        let mut r = valid();
        r.max_tokens = Some(100);
        assert!(for_model(&r, &model, &extra(&r)).is_ok());
        r.max_tokens = Some(101);
        assert_eq!(
            for_model(&r, &model, &extra(&r))
                .unwrap_err()
                .param
                .as_deref(),
            Some("max_tokens")
        );
        r.max_tokens = None;
        r.max_completion_tokens = Some(0);
        assert_eq!(
            for_model(&r, &model, &extra(&r))
                .unwrap_err()
                .param
                .as_deref(),
            Some("max_completion_tokens")
        );
    }

    #[test]
    fn pass_through_fields_cannot_set_contract_fields_or_change_the_price() {
        let mut r = valid();
        for (extra, param) in [
            (r#"{"stream": true}"#, "stream"),
            (r#"{"n": 128}"#, "n"),
            (r#"{"maxTokens": 9}"#, "maxTokens"),
            ("[1]", "extra_json"),
        ] {
            r.extra_json = extra.into();
            assert_eq!(
                request(&r).unwrap_err().param.as_deref(),
                Some(param),
                "{extra}"
            );
        }
        r.extra_json = r#"{"service_tier": "priority", "logit_bias": {}}"#.into();
        assert!(request(&r).is_ok());
        let mut model = ResolvedModel {
            requested_id: "m".into(),
            max_output_tokens: 100,
            ..Default::default()
        };
        assert_eq!(
            for_model(&r, &model, &extra(&r))
                .unwrap_err()
                .param
                .as_deref(),
            Some("service_tier")
        );
        model.passthrough_allow = vec!["service_tier".into()];
        assert!(for_model(&r, &model, &extra(&r)).is_ok());
    }

    #[test]
    fn images_need_a_vision_model() {
        let mut model = ResolvedModel {
            requested_id: "m".into(),
            max_output_tokens: 100,
            vision: true,
            ..Default::default()
        };
        let mut r = valid();
        r.messages[0].content = Some(Content::Parts(tollgate::v1::ContentParts {
            parts: vec![
                tollgate::v1::ContentPart {
                    part: Some(Part::Text("what is this?".into())),
                },
                tollgate::v1::ContentPart {
                    part: Some(Part::ImageUrl(tollgate::v1::ImageUrl {
                        url: "https://example.com/a.png".into(),
                        detail: None,
                    })),
                },
            ],
        }));
        assert!(for_model(&r, &model, &extra(&r)).is_ok());
        model.vision = false;
        assert_eq!(
            for_model(&r, &model, &extra(&r))
                .unwrap_err()
                .param
                .as_deref(),
            Some("messages[0].content[1]")
        );
    }
}
