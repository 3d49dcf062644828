//! Request validation shared by every entry point (REST through the facade, gRPC directly): each
//! problem is a 400 that names the offending field, found before anything is sent upstream.

use tollgate::{
    error::ApiError,
    v1::{ChatRequest, ResolvedModel, Role, content_part::Part, message::Content},
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

/// Checks what can be checked without knowing the model.
pub fn request(request: &ChatRequest) -> Result<(), ApiError> {
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
    Ok(())
}

/// Checks the request against the model it resolved to.
pub fn for_model(request: &ChatRequest, model: &ResolvedModel) -> Result<(), ApiError> {
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
    fn max_tokens_is_bounded_by_the_model() {
        let model = ResolvedModel {
            requested_id: "m".into(),
            max_output_tokens: 100,
            ..Default::default()
        };
        let mut r = valid();
        r.max_tokens = Some(100);
        assert!(for_model(&r, &model).is_ok());
        r.max_tokens = Some(101);
        assert_eq!(
            for_model(&r, &model).unwrap_err().param.as_deref(),
            Some("max_tokens")
        );
        r.max_tokens = None;
        r.max_completion_tokens = Some(0);
        assert_eq!(
            for_model(&r, &model).unwrap_err().param.as_deref(),
            Some("max_completion_tokens")
        );
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
        assert!(for_model(&r, &model).is_ok());
        model.vision = false;
        assert_eq!(
            for_model(&r, &model).unwrap_err().param.as_deref(),
            Some("messages[0].content[1]")
        );
    }
}
