//! The thinking decision: whether the upstream model thinks for one request, and with which
//! effort. Made once per request, before admission, from the alias, the caller's `thinking`
//! switch and `reasoning_effort`, and the model's catalogue `thinking` support; provider adapters
//! only render the result ([`Thinking`]) in their own wire form.
//!
//! The rules, in order:
//! 1. An alias that fixes thinking on or off decides; the request cannot override it (its
//!    `reasoning_effort` still sets the effort when the alias turns thinking on, and is ignored
//!    when the alias turns it off).
//! 2. A model that cannot think (`thinking = "none"`) refuses `reasoning_effort` (any value, as
//!    OpenAI does) and `thinking: {"type": "enabled"}` with a 400 naming the field.
//! 3. Otherwise the caller's `thinking` switch decides, else `reasoning_effort` (`none` = off,
//!    any other value = on with that effort), else nobody did and the model's default applies.
//! 4. A model that always thinks (`thinking = "always"`) refuses to be switched off
//!    (`thinking: {"type": "disabled"}` or `reasoning_effort: "none"`) with a 400 naming the
//!    field, rather than answering with thinking the caller asked to avoid.
//! 5. When thinking is on, the caller's own token budget (`thinking_budget_tokens`, Anthropic's
//!    `thinking.budget_tokens`) rides with it; providers that take a budget send it as given
//!    instead of deriving one from the effort.

use tollgate::{
    error::ApiError,
    v1::{ChatRequest, ReasoningEffort, ResolvedModel, ThinkingSupport},
};

/// What a provider is told about thinking for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// Nobody asked: nothing is sent about thinking and the model does what it does by default.
    /// `thinks` is whether that default is thinking (the catalogue says the model always
    /// thinks), for providers where thinking must be asked for explicitly (Anthropic).
    Default { thinks: bool },
    /// Thinking switched off.
    Off,
    /// Thinking switched on, with the caller's effort and token budget if any (`None`: the
    /// provider's default, or a budget derived from the effort).
    On {
        effort: Option<ReasoningEffort>,
        budget_tokens: Option<u32>,
    },
}

impl Thinking {
    /// Whether the model thinks for this request.
    pub fn is_on(self) -> bool {
        matches!(self, Self::On { .. } | Self::Default { thinks: true })
    }

    /// The switch to send to providers that take one (DeepSeek, MiniMax): on, off, or nothing.
    pub fn switch(self) -> Option<bool> {
        match self {
            Self::On { .. } => Some(true),
            Self::Off => Some(false),
            Self::Default { .. } => None,
        }
    }

    /// The effort asked for, when thinking is on.
    pub fn effort(self) -> Option<ReasoningEffort> {
        match self {
            Self::On { effort, .. } => effort,
            Self::Default { .. } | Self::Off => None,
        }
    }

    /// The caller's own thinking budget, when thinking is on.
    pub fn budget_tokens(self) -> Option<u32> {
        match self {
            Self::On { budget_tokens, .. } => budget_tokens,
            Self::Default { .. } | Self::Off => None,
        }
    }
}

#[cfg(test)]
impl Thinking {
    /// What a bare on/off switch decides on a model that may think (for adapter tests).
    pub fn from_switch(switch: Option<bool>) -> Self {
        match switch {
            Some(true) => Self::On {
                effort: None,
                budget_tokens: None,
            },
            Some(false) => Self::Off,
            None => Self::Default { thinks: false },
        }
    }
}

/// The request's `reasoning_effort`, if set. Validation ([`crate::validate::request`]) already
/// refused values outside the enum.
fn requested_effort(request: &ChatRequest) -> Option<ReasoningEffort> {
    request
        .reasoning_effort
        .and_then(|e| ReasoningEffort::try_from(e).ok())
        .filter(|e| *e != ReasoningEffort::Unspecified)
}

/// Decides thinking for `request` on `route` (rules in the module comment).
pub fn decide(request: &ChatRequest, route: &ResolvedModel) -> Result<Thinking, ApiError> {
    let support = route.thinking();
    let effort = requested_effort(request);
    let thinking_on = Thinking::On {
        effort: effort.filter(|e| *e != ReasoningEffort::None),
        budget_tokens: request.thinking_budget_tokens,
    };
    if let Some(on) = route.thinking_override {
        return Ok(match (on, support) {
            (_, ThinkingSupport::None) => Thinking::Default { thinks: false },
            (true, _) => thinking_on,
            (false, _) => Thinking::Off,
        });
    }
    let model = &route.requested_id;
    if support == ThinkingSupport::None {
        if effort.is_some() {
            return Err(ApiError::invalid_param(
                "reasoning_effort",
                format!("reasoning_effort is not supported with model {model}: it does not think"),
            ));
        }
        if request.thinking == Some(true) {
            return Err(ApiError::invalid_param(
                "thinking",
                format!("model {model} does not think: thinking cannot be enabled"),
            ));
        }
        return Ok(Thinking::Default { thinks: false });
    }
    let (asked, param) = match (request.thinking, effort) {
        (Some(on), _) => (Some(on), "thinking"),
        (None, Some(e)) => (Some(e != ReasoningEffort::None), "reasoning_effort"),
        (None, None) => (None, ""),
    };
    Ok(match asked {
        Some(true) => thinking_on,
        Some(false) if support == ThinkingSupport::Always => {
            return Err(ApiError::invalid_param(
                param,
                format!("model {model} always thinks: thinking cannot be switched off"),
            ));
        }
        Some(false) => Thinking::Off,
        None => Thinking::Default {
            thinks: support == ThinkingSupport::Always,
        },
    })
}

#[cfg(test)]
mod tests {
    use tollgate::error::ErrorKind;

    use super::*;

    fn route(support: ThinkingSupport, alias: Option<bool>) -> ResolvedModel {
        ResolvedModel {
            requested_id: "m".into(),
            thinking: support.into(),
            thinking_override: alias,
            ..Default::default()
        }
    }

    fn ask(thinking: Option<bool>, effort: Option<ReasoningEffort>) -> ChatRequest {
        ChatRequest {
            thinking,
            reasoning_effort: effort.map(Into::into),
            ..Default::default()
        }
    }

    fn refused_param(request: &ChatRequest, route: &ResolvedModel) -> String {
        let e = decide(request, route).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        e.param.unwrap()
    }

    use ReasoningEffort::{High, Low, None as NoEffort};

    #[test]
    fn the_caller_decides_on_a_model_that_may_think() {
        let optional = route(ThinkingSupport::Optional, None);
        let on = |effort| Thinking::On {
            effort,
            budget_tokens: None,
        };
        let cases = [
            (ask(None, None), Thinking::Default { thinks: false }),
            (ask(None, Some(High)), on(Some(High))),
            (ask(None, Some(NoEffort)), Thinking::Off),
            (ask(Some(true), None), on(None)),
            (ask(Some(true), Some(Low)), on(Some(Low))),
            (ask(Some(true), Some(NoEffort)), on(None)),
            // The switch wins over the effort.
            (ask(Some(false), Some(High)), Thinking::Off),
        ];
        for (request, expected) in cases {
            assert_eq!(
                decide(&request, &optional).unwrap(),
                expected,
                "{request:?}"
            );
        }
    }

    #[test]
    fn an_alias_decides_for_itself_and_keeps_the_effort_when_on() {
        let forced_on = route(ThinkingSupport::Optional, Some(true));
        let forced_off = route(ThinkingSupport::Optional, Some(false));
        assert_eq!(
            decide(&ask(Some(false), Some(NoEffort)), &forced_on).unwrap(),
            Thinking::On {
                effort: None,
                budget_tokens: None
            }
        );
        assert_eq!(
            decide(&ask(None, Some(Low)), &forced_on).unwrap(),
            Thinking::On {
                effort: Some(Low),
                budget_tokens: None
            }
        );
        assert_eq!(
            decide(&ask(Some(true), Some(High)), &forced_off).unwrap(),
            Thinking::Off
        );
    }

    #[test]
    fn a_model_that_cannot_think_refuses_to_be_asked() {
        let none = route(ThinkingSupport::None, None);
        for effort in [NoEffort, Low, High] {
            assert_eq!(
                refused_param(&ask(None, Some(effort)), &none),
                "reasoning_effort"
            );
        }
        assert_eq!(refused_param(&ask(Some(true), None), &none), "thinking");
        for request in [ask(None, None), ask(Some(false), None)] {
            assert_eq!(
                decide(&request, &none).unwrap(),
                Thinking::Default { thinks: false }
            );
        }
    }

    #[test]
    fn a_model_that_always_thinks_refuses_to_be_switched_off() {
        let always = route(ThinkingSupport::Always, None);
        assert_eq!(
            decide(&ask(None, None), &always).unwrap(),
            Thinking::Default { thinks: true }
        );
        assert_eq!(
            decide(&ask(None, Some(High)), &always).unwrap(),
            Thinking::On {
                effort: Some(High),
                budget_tokens: None
            }
        );
        assert_eq!(
            refused_param(&ask(None, Some(NoEffort)), &always),
            "reasoning_effort"
        );
        assert_eq!(refused_param(&ask(Some(false), None), &always), "thinking");
    }

    #[test]
    fn the_callers_budget_rides_with_thinking_on_only() {
        let budget = |thinking, alias| {
            let request = ChatRequest {
                thinking,
                thinking_budget_tokens: Some(4000),
                ..Default::default()
            };
            decide(&request, &route(ThinkingSupport::Optional, alias))
                .unwrap()
                .budget_tokens()
        };
        assert_eq!(budget(Some(true), None), Some(4000));
        assert_eq!(budget(None, Some(true)), Some(4000));
        assert_eq!(budget(Some(true), Some(false)), None);
        assert_eq!(budget(Some(false), None), None);
    }
}
