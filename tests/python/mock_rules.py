"""What the mock upstream answers, computed independently of it (tests/src/mock_upstream), and
what that costs: the expectations every test asserts against.

The mock's rules: the reply is `Echo: <last user text>`; a token is a whitespace-separated word;
prompt_tokens counts the words of every message (at least 1); with thinking on (DeepSeek models)
the reasoning is `Thinking about: <last user text>` and its words count as completion (and
reasoning) tokens; `[cache=N]` in the last user text reports N cached prompt tokens.

The Anthropic flavour (`POST …/messages`, tests/src/mock_upstream/anthropic.rs) follows the same
rules over Anthropic's shapes: prompt tokens are the words of `system`, of the text blocks and of
the tool_result contents; the answer echoes the text of the last user message that has text;
`[cache=N]` is reported as `cache_read_input_tokens`, `[cache_write=N]` as
`cache_creation_input_tokens` (both taken out of `input_tokens`); `[tool]` makes it call a tool
(`toolu_mock_0` with `{"location":"Paris"}`), `[parallel]` two (`toolu_mock_1` with
`{"location":"London"}`) unless `disable_parallel_tool_use`; `[refusal]` ends with
`stop_reason: refusal`; a stop sequence found in the answer cuts it (`stop_sequence`); with
thinking on it first thinks `Thinking about: <text>` signed by `anthropic_signature`, and
`output_tokens_details.thinking_tokens` counts those words.
Gemini flavour (`…/models/{model}:generateContent`, tests/src/mock_upstream/gemini.rs): tokens are
the words of the text parts sent (function responses and images count 0); thinking is
`includeThoughts: true`; a function call costs 1 token; more directives: `[parallel]` (call every
declared function), `[finish=REASON]`, `[blocked]` (promptFeedback.blockReason, no candidates),
`[no_finish]` (a stream without finishReason). test_provider_gemini.py holds its expectations.
Flavours by upstream model name: `deepseek*` DeepSeek; `MiniMax*` MiniMax (thinks unless
`thinking: {"type": "disabled"}`; reasoning as `reasoning_details` with `reasoning_split: true`,
else inline `<think>` with the tags split across chunks; reports no reasoning_tokens; refuses
temperature/top_p outside (0, 1], n > 1, the developer role, OpenAI-only fields and, with
reasoning_split, a tool-call assistant message without its reasoning_details, all as HTTP 200 with
`base_resp.status_code` 2013); `compat-*` a quirky compatible server (tool calls finish with `stop`,
no `index` on tool calls, id/name repeated on every fragment, usage always sent without details,
`: keep-alive` comments, no `[DONE]`; refuses the developer role and store/metadata/service_tier/
prediction/verbosity); `o1*`/`o3*`/`o4*`/`gpt-5*` OpenAI reasoning models (refuse max_tokens and
stop); anything else OpenAI.

More directives: `[finish=REASON]` replaces the finish reason; `[base_resp=CODE]` (MiniMax) fails
in-band with HTTP 200; `[reasoning=reasoning_content|reasoning|details|think]` (compat) makes the
model think and puts the reasoning there; `[usage=null_choices|missing_choices|finish]` (compat)
says where a stream's usage goes; `[args=whole]` (compat) sends tool arguments in one delta;
`[no_usage]` (OpenAI, DeepSeek) leaves `usage` out of a non-streamed answer; `[huge_usage]`
reports 2^64 - 1 completion tokens (an impossible count); `[overrun]` answers
past the completion limit. DeepSeek models honour `max_tokens` only (not `max_completion_tokens`).
`[hold=NAME]` (OpenAI protocol) holds the answer, and `[hold_after_first=NAME]` a stream after its
first chunk, until the test releases NAME (`MockUpstream.release`); `MockUpstream.hold_status`
says how many requests arrived and wait under NAME, so tests synchronise on that, not on delays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

TOOL_CALL_ID = "call_mock_0"
TOOL_ARGUMENTS = '{"location":"Paris"}'
MID_STREAM_ERROR = "mock mid-stream failure"


def words(text: str) -> int:
    return len(text.split())


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m)
    return ""


def echo(messages: list[dict[str, Any]]) -> str:
    return f"Echo: {last_user_text(messages)}"


def reasoning(messages: list[dict[str, Any]]) -> str:
    return f"Thinking about: {last_user_text(messages)}"


def upstream_thinks(upstream_body: dict[str, Any]) -> bool:
    """Whether the mock answered this upstream request in thinking mode (DeepSeek only; V4
    models and `deepseek-reasoner` think unless told `thinking: {"type": "disabled"}`)."""
    model = upstream_body.get("model", "")
    if not model.startswith("deepseek"):
        return False
    thinking = upstream_body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        return thinking["type"] == "enabled"
    return model.startswith("deepseek-v4") or model == "deepseek-reasoner"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


ZERO = Usage(0, 0)


def expected_usage(
    messages: list[dict[str, Any]], thinking: bool, max_tokens: int | None = None, reasoning_reported: bool = True
) -> Usage:
    """The usage the mock reports; `reasoning_reported=False` for flavours that count reasoning in
    completion_tokens without a reasoning_tokens detail (MiniMax, compatible servers)."""
    prompt = max(1, sum(words(message_text(m)) for m in messages))
    m = re.search(r"\[cache=(\d+)\]", last_user_text(messages))
    cached = min(int(m.group(1)), prompt) if m else 0
    content = words(echo(messages))
    if max_tokens is not None:
        content = min(content, max_tokens)
    reasoning_tokens = words(reasoning(messages)) if thinking else 0
    return Usage(prompt, content + reasoning_tokens, cached, reasoning_tokens if reasoning_reported else 0)


def usage_of(sdk_usage: Any) -> Usage:
    """The SDK's `CompletionUsage` as a `Usage` (details missing count as 0)."""
    details = sdk_usage.prompt_tokens_details
    cdetails = sdk_usage.completion_tokens_details
    return Usage(
        sdk_usage.prompt_tokens,
        sdk_usage.completion_tokens,
        (details.cached_tokens or 0) if details else 0,
        (cdetails.reasoning_tokens or 0) if cdetails else 0,
    )


MILLION = Decimal(1_000_000)


def cost_usd(usage: Usage, prices: tuple[str, str, str]) -> Decimal:
    """Exact cost: (prompt - cached) x input + cached x cached_input + completion x output, per 1M."""
    input_price, cached_price, output_price = (Decimal(p) for p in prices)
    return (
        (usage.prompt_tokens - usage.cached_tokens) * input_price
        + usage.cached_tokens * cached_price
        + usage.completion_tokens * output_price
    ) / MILLION


def cost_picodollars(usage: Usage, prices: tuple[str, str, str]) -> int:
    exact = cost_usd(usage, prices) * Decimal(10**12)
    assert exact == exact.to_integral_value(), "prices with <= 6 decimals give whole picodollars"
    return int(exact)


# ---- Anthropic flavour ------------------------------------------------------------------------

ANTHROPIC_TOOL_CALLS = (("toolu_mock_0", '{"location":"Paris"}'), ("toolu_mock_1", '{"location":"London"}'))


def anthropic_signature(thinking: str) -> str:
    """The signature the mock gives a thinking text (FNV-1a 64, hex), as `signature` in anthropic.rs."""
    h = 0xCBF29CE484222325
    for b in thinking.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"mocksig_{h:016x}"


def _block_words(block: dict[str, Any]) -> int:
    if block.get("type") == "text":
        return words(block["text"])
    if block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return words(content)
        if isinstance(content, list):
            return sum(words(p.get("text", "")) for p in content)
    return 0


def anthropic_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens the Anthropic mock reports for the request body it received."""
    system = body.get("system", "")
    total = words(system) if isinstance(system, str) else sum(words(b["text"]) for b in system)
    for m in body["messages"]:
        content = m["content"]
        total += words(content) if isinstance(content, str) else sum(_block_words(b) for b in content)
    return max(1, total)


def anthropic_last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body["messages"]):
        if m["role"] != "user":
            continue
        content = m["content"]
        text = content if isinstance(content, str) else " ".join(b["text"] for b in content if b.get("type") == "text")
        if text:
            return text
    return ""


@dataclass(frozen=True)
class CacheUsage:
    """Usage with Anthropic's cache writes: prompt includes cached and written tokens."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def cost_with_cache_writes_usd(usage: CacheUsage, prices: tuple[str, str, str, str]) -> Decimal:
    """Exact cost with prices (input, cached_input, cache_write, output) per 1M tokens."""
    input_price, cached_price, write_price, output_price = (Decimal(p) for p in prices)
    uncached = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    return (
        uncached * input_price
        + usage.cached_tokens * cached_price
        + usage.cache_write_tokens * write_price
        + usage.completion_tokens * output_price
    ) / MILLION
