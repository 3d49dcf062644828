"""Traces, as an OpenTelemetry collector receives them: a monolith exporting OTLP/HTTP to a real
receiver (an http.server on 127.0.0.1, decoding each `ExportTraceServiceRequest` with the
`opentelemetry-proto` package). A non-streamed and a streamed chat, each sent with a W3C
`traceparent`, make one trace under the caller's trace id: the REST request span (HTTP
semantic conventions) as the caller's child, and in it the chat span with the GenAI attributes
(provider, models, token usage agreeing with the answer, finish reasons; a stream's
`first_token` event) and the admit and settle spans. No attribute holds the API key, the
provider's key or the prompt."""

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

from harness import PROVIDER_KEY, Gateway, MockUpstream, make_client, user, wait_until

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
