"""Traces, as an OpenTelemetry collector receives them: a monolith exporting OTLP/HTTP to a real
receiver (an http.server on 127.0.0.1, decoding each `ExportTraceServiceRequest` with the
`opentelemetry-proto` package). A non-streamed and a streamed chat, each sent with a W3C
`traceparent`, make one trace under the caller's trace id: the REST request span (HTTP
semantic conventions) as the caller's child, and in it the chat span with the GenAI attributes
(provider, models, token usage agreeing with the answer, finish reasons; a stream's
`first_token` event) and the admit and settle spans. No attribute holds the API key, the
provider's key or the prompt; the upstream gets no `traceparent` unless
`[telemetry] propagate_upstream` is on.

Then the targets as separate processes (rest, inference, catalog, billing), each exporting to the
same receiver: a streamed and a non-streamed chat through rest are one trace across all four,
with the parent links of the calls between them (rest's request span -> inference's
`Inference/Chat` server span -> chat -> admit -> `resolve model` -> catalog's
`Catalog/ResolveModel`; admit -> billing's `Metering/Admit`; settle -> `Metering/Settle` ->
`ledger commit`), the RPC conventions on each server span, and the upstream request carrying the
trace context (switched on there)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from harness import PROVIDER_KEY, Gateway, MockUpstream, gateway_config, make_client, user, wait_until
from split_deployment import Targets, free_port, sdk

TIMEOUT = 30


@dataclass
class Received:
    """One exported span with its resource's attributes."""

    span: Span
    resource: dict[str, object]
    attributes: dict[str, object] = field(default_factory=dict)


def value(any_value: AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint (`POST /v1/traces`, protobuf) keeping every span it gets."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.keep(self.path, request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def keep(self, path: str, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.paths.append(path)
            for resource_spans in request.resource_spans:
                resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: value(a.value) for a in span.attributes}
                        self.spans.append(Received(span, resource, attributes))

    def trace(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.spans if r.span.trace_id.hex() == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> OtlpReceiver:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gateway(mock: MockUpstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    gw = Gateway(
        tmp_path_factory.mktemp("traced"),
        mock,
        extra_config=f'\n[telemetry]\notlp_endpoint = "http://127.0.0.1:{receiver.port}"\n',
        # The batch processor's export interval (the SDK's standard variable), so spans arrive soon.
        extra_env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    yield gw
    gw.stop()


def traceparent() -> tuple[str, str, str]:
    """A sampled W3C trace context: (header, trace id, parent span id)."""
    trace_id, parent_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def complete_trace(receiver: OtlpReceiver, trace_id: str) -> dict[str, Received]:
    """Waits for the trace's request, chat, admit and settle spans; returns them by role."""

    def roles() -> dict[str, Received]:
        found: dict[str, Received] = {}
        for r in receiver.trace(trace_id):
            if "http.request.method" in r.attributes:
                found["http"] = r
            elif r.attributes.get("gen_ai.operation.name") == "chat":
                found["chat"] = r
            elif r.span.name in ("admit", "settle"):
                found[r.span.name] = r
        return found

    wait_until(lambda: len(roles()) == 4, timeout=TIMEOUT, what=f"the spans of trace {trace_id}")
    return roles()


def check_trace(spans: dict[str, Received], parent_id: str, stream: bool) -> Received:
    http, chat = spans["http"], spans["chat"]
    # The REST request is the caller's child, the chat work inside it, admit and settle inside that.
    assert http.span.parent_span_id.hex() == parent_id
    assert http.span.kind == Span.SPAN_KIND_SERVER
    assert http.span.name == "POST /v1/chat/completions"
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["http.route"] == "/v1/chat/completions"
    assert http.attributes["http.response.status_code"] == 200
    assert chat.span.parent_span_id == http.span.span_id
    for name in ("admit", "settle"):
        assert spans[name].span.parent_span_id == chat.span.span_id
    for r in spans.values():
        assert r.resource["service.name"] == "tollgate-all"
    attrs = chat.attributes
    assert chat.span.name == "chat deepseek-chat"
    assert attrs["gen_ai.system"] == "deepseek"
    assert attrs["gen_ai.request.model"] == "deepseek-chat"
    assert attrs["gen_ai.response.model"]
    assert attrs["gen_ai.response.finish_reasons"] == "stop"
    assert attrs["tollgate.stream"] is stream
    events = [e.name for e in chat.span.events]
    assert ("first_token" in events) is stream
    return chat


def assert_no_secret(receiver: OtlpReceiver, trace_id: str, secrets: list[str]) -> None:
    for r in receiver.trace(trace_id):
        texts = [str(v) for v in r.attributes.values()] + [r.span.name]
        texts += [str(value(a.value)) for e in r.span.events for a in e.attributes]
        for secret in secrets:
            assert not any(secret in text for text in texts), f"{secret!r} in span {r.span.name}: {r.attributes}"


def test_a_chat_is_one_trace_under_the_callers_traceparent(gateway: Gateway, receiver: OtlpReceiver):
    key = gateway.create_key("enterprise")
    client = make_client(gateway, key)
    header, trace_id, parent_id = traceparent()
    prompt = f"traced unary {trace_id}"
    answer = client.chat.completions.create(
        model="deepseek-chat", messages=user(prompt), extra_headers={"traceparent": header}
    )
    chat = check_trace(complete_trace(receiver, trace_id), parent_id, stream=False)
    assert chat.attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert chat.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert chat.attributes["tollgate.request_id"] == answer.id
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    assert_no_secret(receiver, trace_id, [key.secret, PROVIDER_KEY, prompt])


def test_a_stream_is_one_trace_with_its_first_token_event(gateway: Gateway, receiver: OtlpReceiver):
    key = gateway.create_key("enterprise")
    client = make_client(gateway, key)
    header, trace_id, parent_id = traceparent()
    prompt = f"traced stream {trace_id}"
    stream = client.chat.completions.create(
        model="deepseek-chat",
        messages=user(prompt),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": header},
    )
    chunks = list(stream)
    [usage] = [c.usage for c in chunks if c.usage]
    chat = check_trace(complete_trace(receiver, trace_id), parent_id, stream=True)
    assert chat.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert chat.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert_no_secret(receiver, trace_id, [key.secret, PROVIDER_KEY, prompt])


def test_without_a_traceparent_a_request_starts_its_own_trace(gateway: Gateway, receiver: OtlpReceiver):
    key = gateway.create_key("enterprise")
    answer = make_client(gateway, key).chat.completions.create(model="deepseek-chat", messages=user("untraced"))

    def chat_span() -> Received | None:
        with receiver._lock:
            spans = list(receiver.spans)
        return next((r for r in spans if r.attributes.get("tollgate.request_id") == answer.id), None)

    wait_until(lambda: chat_span() is not None, timeout=TIMEOUT, what="the chat span of an untraced request")
    spans = complete_trace(receiver, chat_span().span.trace_id.hex())
    assert not spans["http"].span.parent_span_id


def test_the_upstream_gets_no_trace_context_by_default(gateway: Gateway, receiver: OtlpReceiver, mock: MockUpstream):
    key = gateway.create_key("enterprise")
    header, trace_id, _ = traceparent()
    marker = f"no upstream trace {trace_id}"
    make_client(gateway, key).chat.completions.create(
        model="deepseek-chat", messages=user(marker), extra_headers={"traceparent": header}
    )
    sent = mock.single_request_with(marker)
    assert "traceparent" not in sent["headers"], sent["headers"]


# ---- The targets as separate processes: one trace across rest, inference, catalog and billing.

SPLIT_ADMIN_TOKEN = f"e2e-admin-{os.urandom(8).hex()}"
SPLIT_PEER_TOKEN = f"e2e-peer-{os.urandom(16).hex()}"
SERVICES = ("rest", "inference", "catalog", "billing")


@pytest.fixture(scope="module")
def split(mock: MockUpstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Targets:
    """rest, inference, catalog and billing (SQLite) as processes on one config file, each
    exporting its spans to the same receiver, the trace context sent upstream too."""
    tmp_dir = tmp_path_factory.mktemp("traced-split")
    ports = {name: free_port() for name in ("inference", "catalog", "billing", "metering")}
    targets = Targets(tmp_dir / "tollgate.toml", SPLIT_ADMIN_TOKEN)
    targets.config_path.write_text(
        gateway_config(tmp_dir, mock.port)
        + f"""
[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"

[services]
inference = "http://127.0.0.1:{ports['inference']}"
catalog = "http://127.0.0.1:{ports['catalog']}"
billing = "http://127.0.0.1:{ports['billing']}"
metering = "http://127.0.0.1:{ports['metering']}"
internal_token_env = "TOLLGATE_INTERNAL_TOKEN"

[telemetry]
otlp_endpoint = "http://127.0.0.1:{receiver.port}"
propagate_upstream = true
"""
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
    base.update(OTEL_BSP_SCHEDULE_DELAY="100", RUST_BACKTRACE="1")
    peer = dict(base, TOLLGATE_INTERNAL_TOKEN=SPLIT_PEER_TOKEN)
    metrics = ("--metrics-addr", "127.0.0.1:0")
    try:
        targets.start("catalog", "catalog", "--grpc-addr", f"127.0.0.1:{ports['catalog']}", *metrics, env=base)
        targets.start(
            "billing",
            "billing",
            "--grpc-addr",
            f"127.0.0.1:{ports['billing']}",
            "--internal-grpc-addr",
            f"127.0.0.1:{ports['metering']}",
            *metrics,
            env=dict(peer, TOLLGATE_ADMIN_TOKEN=SPLIT_ADMIN_TOKEN),
        )
        targets.start(
            "inference",
            "inference",
            "--grpc-addr",
            f"127.0.0.1:{ports['inference']}",
            *metrics,
            env=dict(peer, MOCK_DEEPSEEK_KEY=PROVIDER_KEY),
        )
        targets.start("rest", "rest", "--http-addr", "127.0.0.1:0", env=base)
        wait_until(lambda: all(targets.readyz(n).status_code == 200 for n in SERVICES), timeout=TIMEOUT, what="every target ready")
        yield targets
    finally:
        targets.stop()


def rpc(r: Received) -> str | None:
    """`Service/Method` of a gRPC server span."""
    if r.attributes.get("rpc.system") != "grpc":
        return None
    return f"{r.attributes['rpc.service']}/{r.attributes['rpc.method']}"


def split_trace(receiver: OtlpReceiver, trace_id: str, stream: bool) -> dict[str, Received]:
    """Waits for every span one chat makes across the four targets; returns them by role."""
    chat_rpc = f"tollgate.v1.Inference/{'ChatStream' if stream else 'Chat'}"
    wanted = {
        "http",
        "chat",
        "admit",
        "settle",
        "resolve model",
        "ledger commit",
        chat_rpc,
        "tollgate.v1.Catalog/ResolveModel",
        "tollgate.v1.Metering/Admit",
        "tollgate.v1.Metering/Settle",
    }

    def roles() -> dict[str, Received]:
        found: dict[str, Received] = {}
        spans = receiver.trace(trace_id)
        by_id = {r.span.span_id: r for r in spans}
        for r in spans:
            if "http.request.method" in r.attributes:
                found["http"] = r
            elif r.attributes.get("gen_ai.operation.name") == "chat":
                found["chat"] = r
            elif r.span.name in ("admit", "settle", "resolve model", "ledger commit"):
                found[r.span.name] = r
            elif rpc(r) == "tollgate.v1.Catalog/ResolveModel":
                # The resolution inference asks for (billing may ask Catalog for prices too).
                parent = by_id.get(r.span.parent_span_id)
                if parent is not None and parent.span.name == "resolve model":
                    found[rpc(r)] = r
            elif rpc(r):
                found[rpc(r)] = r
        return found

    wait_until(lambda: wanted <= roles().keys(), timeout=TIMEOUT, what=f"the spans of trace {trace_id} in every target")
    return roles()


def check_split_trace(spans: dict[str, Received], parent_id: str, stream: bool) -> None:
    chat_rpc = spans[f"tollgate.v1.Inference/{'ChatStream' if stream else 'Chat'}"]
    parent_of = {
        # role: (its parent's role, the process that exported it)
        "http": (None, "rest"),
        chat_rpc.span.name: ("http", "inference"),
        "chat": (chat_rpc.span.name, "inference"),
        "admit": ("chat", "inference"),
        "settle": ("chat", "inference"),
        "resolve model": ("admit", "inference"),
        "tollgate.v1.Catalog/ResolveModel": ("resolve model", "catalog"),
        "tollgate.v1.Metering/Admit": ("admit", "billing"),
        "tollgate.v1.Metering/Settle": ("settle", "billing"),
        "ledger commit": ("tollgate.v1.Metering/Settle", "billing"),
    }
    assert spans["http"].span.parent_span_id.hex() == parent_id
    for role, (parent, service) in parent_of.items():
        r = spans[role]
        assert r.resource["service.name"] == f"tollgate-{service}", (role, r.resource)
        if parent is not None:
            assert r.span.parent_span_id == spans[parent].span.span_id, f"{role} is not a child of {parent}"
    for role in parent_of:
        r = spans[role]
        if rpc(r):
            # The RPC conventions: a server span named Service/Method with the call's status.
            assert r.span.kind == Span.SPAN_KIND_SERVER
            assert r.span.name == role
            assert r.attributes["rpc.grpc.status_code"] == 0, (role, r.attributes)
    assert spans["ledger commit"].attributes["tollgate.ledger.batch_rows"] >= 1
    assert spans["resolve model"].attributes["tollgate.provider"] == "deepseek"
    assert spans["chat"].attributes["tollgate.stream"] is stream


def check_upstream_trace_context(mock: MockUpstream, marker: str, trace_id: str, spans: list[Received]) -> None:
    """The upstream request carried the trace (`propagate_upstream`), under an inference span."""
    sent = mock.single_request_with(marker)["headers"]["traceparent"]
    version, sent_trace, sent_parent, _flags = sent.split("-")
    assert (version, sent_trace) == ("00", trace_id)
    inference_spans = {r.span.span_id.hex() for r in spans if r.resource["service.name"] == "tollgate-inference"}
    assert sent_parent in inference_spans


def test_split_targets_make_one_trace_for_a_chat(split: Targets, receiver: OtlpReceiver, mock: MockUpstream):
    key = split.create_key("rest")
    header, trace_id, parent_id = traceparent()
    marker = f"split traced unary {trace_id}"
    answer = sdk(split.rest_url("rest"), key).chat.completions.create(
        model="deepseek-chat", messages=user(marker), extra_headers={"traceparent": header}
    )
    spans = split_trace(receiver, trace_id, stream=False)
    check_split_trace(spans, parent_id, stream=False)
    assert spans["chat"].attributes["tollgate.request_id"] == answer.id
    assert spans["chat"].attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    check_upstream_trace_context(mock, marker, trace_id, receiver.trace(trace_id))
    assert_no_secret(receiver, trace_id, [key.secret, PROVIDER_KEY, SPLIT_PEER_TOKEN, SPLIT_ADMIN_TOKEN, marker])


def test_split_targets_make_one_trace_for_a_stream(split: Targets, receiver: OtlpReceiver, mock: MockUpstream):
    key = split.create_key("rest")
    header, trace_id, parent_id = traceparent()
    marker = f"split traced stream {trace_id}"
    chunks = list(
        sdk(split.rest_url("rest"), key).chat.completions.create(
            model="deepseek-chat",
            messages=user(marker),
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"traceparent": header},
        )
    )
    [usage] = [c.usage for c in chunks if c.usage]
    spans = split_trace(receiver, trace_id, stream=True)
    check_split_trace(spans, parent_id, stream=True)
    assert "first_token" in [e.name for e in spans["chat"].span.events]
    assert spans["chat"].attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    check_upstream_trace_context(mock, marker, trace_id, receiver.trace(trace_id))
    assert_no_secret(receiver, trace_id, [key.secret, PROVIDER_KEY, SPLIT_PEER_TOKEN, SPLIT_ADMIN_TOKEN, marker])
