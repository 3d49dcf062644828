"""Streams behind reverse proxies: every SSE answer (chat completions, Anthropic's Messages,
OpenAI's Responses) says `X-Accel-Buffering: no`, so nginx, which buffers answers by default,
passes each event through as it comes; JSON answers do not carry it."""

from __future__ import annotations

import httpx
import pytest

from harness import auth, nonce, user

TIMEOUT = 30

STREAMS = {
    "/chat/completions": lambda text: {"model": "deepseek-chat", "messages": user(text), "stream": True},
    "/messages": lambda text: {"model": "deepseek-chat", "max_tokens": 64, "messages": user(text), "stream": True},
    "/responses": lambda text: {"model": "deepseek-chat", "input": text, "stream": True},
}


@pytest.mark.parametrize("path", sorted(STREAMS))
def test_event_streams_are_not_buffered_by_proxies(gateway, key, path):
    body = STREAMS[path](f"unbuffered {nonce()}")
    with httpx.stream("POST", f"{gateway.base_url}{path}", json=body, headers=auth(key), timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert "data:" in r.read().decode()


def test_json_answers_do_not_carry_it(gateway, key):
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "deepseek-chat", "messages": user("json")},
        headers=auth(key),
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert "x-accel-buffering" not in r.headers
