//! Names both sides of the contract agree on for requests that arrived in a provider's own
//! protocol (`ChatRequest.native`) and for the reasoning state a provider needs back
//! (`ReasoningDetail.format`): the REST surfaces set them, the provider adapters read them.

/// `NativeRequest.protocol` of a request that arrived on Anthropic's Messages API.
pub const ANTHROPIC_MESSAGES: &str = "anthropic.messages";

/// The `ReasoningDetail.format` of Anthropic's thinking blocks (signed or redacted).
pub const ANTHROPIC_REASONING_FORMAT: &str = "anthropic-claude-v1";
