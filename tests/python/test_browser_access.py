"""What browsers need: CORS on the REST routes (preflight answered, the configured origins
allowed, the headers clients read exposed; none by default), and grpc-web on the public gRPC
listener through a real grpc-web client (Connect's grpc-web transport for Node.js, over HTTP/1.1,
tests/grpc-web/call.mjs): unary ListModels and Chat, and a server-streaming ChatStream billed in
the ledger; `application/grpc-web-text` framed by hand."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from tollgate.v1 import inference_pb2

from harness import MODEL_IDS, PRICES, REPO_ROOT, Gateway, auth, nonce, sqlite_rows, user
from mock_rules import cost_picodollars, echo, expected_usage

ORIGIN = "http://app.example.test"
TIMEOUT = 30
GRPC_WEB = REPO_ROOT / "tests" / "grpc-web"
DESCRIPTORS = Path(__file__).resolve().parent / "generated" / "tollgate.binpb"


@pytest.fixture(scope="module")
def browser_gateway(mock, tmp_path_factory):
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-cors"),
        mock,
        extra_env={"TOLLGATE__SERVER__CORS_ALLOWED_ORIGINS": f'["{ORIGIN}"]'},
    )
    yield gw
    gw.stop()


def preflight(url: str, origin: str, method: str = "POST", headers: str = "authorization, content-type") -> httpx.Response:
    return httpx.options(
        url,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
        timeout=TIMEOUT,
    )


def listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


# ---- CORS on REST ------------------------------------------------------------------------------


def test_preflight_from_an_allowed_origin(browser_gateway):
    sdk_headers = "authorization, content-type, x-stainless-os, x-stainless-retry-count"
    r = preflight(f"{browser_gateway.base_url}/chat/completions", ORIGIN, headers=sdk_headers)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in listed(r.headers["access-control-allow-methods"]) | {m.upper() for m in listed(r.headers["access-control-allow-methods"])}
    assert listed(r.headers["access-control-allow-headers"]) >= listed(sdk_headers)
    assert int(r.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in r.headers


def test_a_cross_origin_chat_is_readable(browser_gateway):
    key = browser_gateway.create_key("enterprise")
    text = f"cors hello {nonce()}"
    r = httpx.post(
        f"{browser_gateway.base_url}/chat/completions",
        json={"model": "deepseek-chat", "messages": user(text)},
        headers={**auth(key), "Origin": ORIGIN},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == echo(user(text))
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = listed(r.headers["access-control-expose-headers"])
    assert exposed >= {"x-request-id", "retry-after", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}


def test_errors_are_readable_cross_origin(browser_gateway):
    """A browser script must be able to read a 401's body to show it."""
    r = httpx.post(
        f"{browser_gateway.base_url}/chat/completions",
        json={"model": "deepseek-chat", "messages": user("no key")},
        headers={"Origin": ORIGIN},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == ORIGIN


def test_other_origins_are_not_allowed(browser_gateway):
    r = preflight(f"{browser_gateway.base_url}/chat/completions", "http://evil.example.test")
    assert "access-control-allow-origin" not in r.headers


def test_no_origin_is_allowed_by_default(gateway):
    r = preflight(f"{gateway.base_url}/chat/completions", ORIGIN)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{gateway.base_url}/models", headers={"Origin": ORIGIN}, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in r.headers


def test_any_origin_when_configured_so(mock, tmp_path):
    gw = Gateway(tmp_path, mock, extra_env={"TOLLGATE__SERVER__CORS_ALLOWED_ORIGINS": '["*"]'})
    try:
        r = preflight(f"{gw.base_url}/chat/completions", "http://anywhere.example.test")
        assert r.headers["access-control-allow-origin"] == "*"
    finally:
        gw.stop()


# ---- CORS as a browser enforces it --------------------------------------------------------------

# A page's script calling the gateway from another origin: Chromium sends the preflight itself
# (an `authorization` header makes the call non-simple), hides every header not exposed, and
# refuses the answer to an origin the gateway does not allow.
CROSS_ORIGIN_FETCH = """async ([url, key, body]) => {
  try {
    const r = await fetch(url, {
      method: "POST",
      headers: {"Authorization": `Bearer ${key}`, "Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
    const text = await r.text();
    return {status: r.status, requestId: r.headers.get("x-request-id"),
            date: r.headers.get("date"), text};
  } catch (e) {
    return {error: String(e)};
  }
}"""


class PageServer:
    """A web app's own server: one static page on 127.0.0.1, reachable as two origins
    (`http://localhost:PORT` and `http://127.0.0.1:PORT`), both loopback like the gateway, so
    Chromium's local-network checks do not apply and only CORS decides."""

    def __init__(self, root: Path):
        (root / "index.html").write_text("<!doctype html><title>app</title><p>app</p>")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    server = PageServer(tmp_path_factory.mktemp("web-app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app_gateway(mock, page_server, tmp_path_factory):
    """A gateway that allows the app's `http://localhost:PORT` origin only."""
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-app-cors"),
        mock,
        extra_env={"TOLLGATE__SERVER__CORS_ALLOWED_ORIGINS": f'["http://localhost:{page_server.port}"]'},
    )
    yield gw
    gw.stop()


def fetch_from(browser, origin: str, url: str, key, body: dict) -> dict:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{origin}/index.html")
        return page.evaluate(CROSS_ORIGIN_FETCH, [url, key.secret, body])
    finally:
        context.close()


def test_chromium_calls_the_gateway_from_an_allowed_origin(browser, page_server, app_gateway):
    key = app_gateway.create_key("enterprise")
    text = f"browser cors {nonce()}"
    body = {"model": "deepseek-chat", "messages": user(text)}
    got = fetch_from(browser, f"http://localhost:{page_server.port}", f"{app_gateway.base_url}/chat/completions", key, body)
    assert got.get("status") == 200, got
    assert json.loads(got["text"])["choices"][0]["message"]["content"] == echo(user(text))
    # Readable only because the gateway exposes it; `date`, which every answer carries but CORS
    # does not expose, stays hidden from the script.
    assert got["requestId"] and got["requestId"].startswith("chatcmpl-"), got
    assert got["date"] is None, got
    assert "date" in httpx.get(f"{app_gateway.base_url}/models", headers=auth(key), timeout=TIMEOUT).headers
    rows = sqlite_rows(app_gateway.db_path, "SELECT request_id FROM usage_ledger WHERE key_id = ?", key.key_id)
    assert rows == [(got["requestId"],)]


def test_chromium_refuses_the_answer_to_an_origin_not_allowed(browser, page_server, app_gateway):
    key = app_gateway.create_key("enterprise")
    body = {"model": "deepseek-chat", "messages": user(f"not allowed {nonce()}")}
    # The same page under another origin (the address instead of the name).
    got = fetch_from(browser, f"http://127.0.0.1:{page_server.port}", f"{app_gateway.base_url}/chat/completions", key, body)
    assert "error" in got and "Failed to fetch" in got["error"], got
    # The preflight failed, so the call itself was never sent: nothing admitted, nothing billed.
    assert sqlite_rows(app_gateway.db_path, "SELECT 1 FROM usage_ledger WHERE key_id = ?", key.key_id) == []


# ---- grpc-web ----------------------------------------------------------------------------------


def grpc_web_call(gateway: Gateway, service: str, method: str, request: dict, key=None) -> dict:
    node = shutil.which("node")
    assert node, "Node.js is needed for the grpc-web client"
    argv = [node, str(GRPC_WEB / "call.mjs"), str(DESCRIPTORS), f"http://{gateway.grpc_addr}", service, method, json.dumps(request)]
    if key is not None:
        argv.append(key.secret)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"grpc-web client failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_grpc_web_preflight_on_the_grpc_listener(browser_gateway):
    r = preflight(
        f"http://{browser_gateway.grpc_addr}/tollgate.v1.Inference/Chat",
        ORIGIN,
        headers="authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout",
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-grpc-web" in listed(r.headers["access-control-allow-headers"])


def test_grpc_web_list_models(browser_gateway):
    key = browser_gateway.create_key("enterprise")
    result = grpc_web_call(browser_gateway, "tollgate.v1.Catalog", "ListModels", {}, key)
    assert result["error"] is None, result
    assert set(MODEL_IDS) <= {m["id"] for m in result["messages"][0]["models"]}


def test_grpc_web_chat(browser_gateway):
    key = browser_gateway.create_key("enterprise")
    text = f"grpc-web hello {nonce()}"
    request = {"model": "deepseek-chat", "messages": [{"role": "ROLE_USER", "text": text}]}
    [answer] = grpc_web_call(browser_gateway, "tollgate.v1.Inference", "Chat", request, key)["messages"]
    assert answer["choices"][0]["message"]["text"] == echo(user(text))
    assert answer["choices"][0]["message"]["role"] == "ROLE_ASSISTANT"


def test_grpc_web_errors_carry_the_status(browser_gateway):
    request = {"model": "deepseek-chat", "messages": [{"role": "ROLE_USER", "text": "no key"}]}
    result = grpc_web_call(browser_gateway, "tollgate.v1.Inference", "Chat", request)
    assert result["messages"] == []
    assert result["error"]["code"] == "Unauthenticated", result


def test_grpc_web_chat_stream_is_billed(browser_gateway):
    key = browser_gateway.create_key("pro")
    text = f"grpc-web stream {nonce()}"
    request = {
        "model": "deepseek-chat",
        "messages": [{"role": "ROLE_USER", "text": text}],
        "streamOptions": {"includeUsage": True},
    }
    result = grpc_web_call(browser_gateway, "tollgate.v1.Inference", "ChatStream", request, key)
    assert result["error"] is None, result
    chunks = result["messages"]
    assert len(chunks) >= 3
    # A delta's role is the enum a message's role is, in every encoding of the contract.
    assert chunks[0]["choices"][0]["delta"]["role"] == "ROLE_ASSISTANT", chunks[0]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    assert content == echo(user(text))
    want = expected_usage(user(text), thinking=False)
    usage = chunks[-1]["usage"]
    assert (int(usage["promptTokens"]), int(usage["completionTokens"])) == (want.prompt_tokens, want.completion_tokens)
    cost = cost_picodollars(want, PRICES["deepseek-v4-flash"])
    assert int(usage["costPicodollars"]) == cost
    rows = sqlite_rows(
        browser_gateway.db_path,
        "SELECT outcome, prompt_tokens, completion_tokens, cost_picodollars, streamed FROM usage_ledger WHERE key_id = ?",
        key.key_id,
    )
    assert rows == [("succeeded", want.prompt_tokens, want.completion_tokens, cost, 1)]


def grpc_web_text_frame(message: bytes) -> bytes:
    return base64.b64encode(b"\x00" + struct.pack(">I", len(message)) + message)


def test_grpc_web_text(browser_gateway):
    """`application/grpc-web-text`: base64 frames both ways, trailers in the body."""
    key = browser_gateway.create_key("enterprise")
    text = f"grpc-web-text {nonce()}"
    request = inference_pb2.ChatRequest(
        model="deepseek-chat", messages=[inference_pb2.Message(role=inference_pb2.ROLE_USER, text=text)]
    )
    r = httpx.post(
        f"http://{browser_gateway.grpc_addr}/tollgate.v1.Inference/Chat",
        content=grpc_web_text_frame(request.SerializeToString()),
        headers={
            **auth(key),
            "Content-Type": "application/grpc-web-text",
            # As grpc-web's text mode asks for its answer (tonic-web answers in the accepted mode).
            "Accept": "application/grpc-web-text",
            "X-Grpc-Web": "1",
            "Origin": ORIGIN,
        },
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/grpc-web-text")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    # Each chunk is base64 on its own (a padded chunk may be followed by another).
    body = b"".join(base64.b64decode(part) for part in re.findall(rb"[^=]+=*", r.content))
    frames = []
    while body:
        flag, length = body[0], struct.unpack(">I", body[1:5])[0]
        frames.append((flag, body[5 : 5 + length]))
        body = body[5 + length :]
    [(data_flag, data), (trailer_flag, trailers)] = frames
    assert (data_flag, trailer_flag) == (0x00, 0x80)
    answer = inference_pb2.ChatResponse.FromString(data)
    assert answer.choices[0].message.text == echo(user(text))
    assert b"grpc-status:0" in trailers.replace(b" ", b"")
