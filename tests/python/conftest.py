"""Fixtures of the end-to-end suite: gRPC stubs generated from proto/ at session start, and per
test module one mock upstream plus one `tollgate serve` pointed at it. Tests whose counts matter
take a fresh API key.

Binaries: TOLLGATE_BIN and MOCK_UPSTREAM_BIN (default target/debug/{tollgate,mock-upstream}).
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO_ROOT, ApiKey, Gateway, MockUpstream, make_client  # noqa: E402

GENERATED = Path(__file__).resolve().parent / "generated"


def _generate_grpc_stubs() -> None:
    """Compiles proto/tollgate/v1/*.proto into tests/python/generated (gitignored): Python stubs
    and the descriptor set `tollgate.binpb`."""
    import grpc_tools
    from grpc_tools import protoc

    proto_root = REPO_ROOT / "proto"
    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "tollgate" / "v1").glob("*.proto"))
    GENERATED.mkdir(exist_ok=True)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={GENERATED}",
            f"--grpc_python_out={GENERATED}",
            # The same contract as one descriptor set, for clients that load it at run time (the
            # grpc-web client in tests/grpc-web).
            f"--descriptor_set_out={GENERATED / 'tollgate.binpb'}",
            "--include_imports",
            *protos,
        ]
    )
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with {code}")


def pytest_configure(config: pytest.Config) -> None:
    _generate_grpc_stubs()
    sys.path.insert(0, str(GENERATED))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attaches the gateway's and the mock's output to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("gateway", "mock"):
            proc = funcargs.get(name)
            if proc is not None:
                report.sections.append((f"{name} output", proc.logs() if name == "gateway" else proc.process.logs()))


@pytest.fixture(scope="module")
def mock() -> MockUpstream:
    upstream = MockUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    gw = Gateway(tmp_path_factory.mktemp("tollgate"), mock)
    yield gw
    gw.stop()


@pytest.fixture
def key(gateway: Gateway) -> ApiKey:
    """A fresh enterprise key (100 rpm), so every test starts from zero usage."""
    return gateway.create_key("enterprise")


@pytest.fixture
def client(gateway: Gateway, key: ApiKey) -> OpenAI:
    c = make_client(gateway, key)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_channel(gateway: Gateway) -> grpc.Channel:
    channel = grpc.insecure_channel(gateway.grpc_addr)
    grpc.channel_ready_future(channel).result(timeout=15)
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def inference(grpc_channel: grpc.Channel):
    """The Inference stub on the module's gateway."""
    from tollgate.v1 import inference_pb2_grpc

    return inference_pb2_grpc.InferenceStub(grpc_channel)


# Debian's chromium (scripts/e2e.sh installs it when missing), started as this machine allows:
# without the background-networking flags it keeps dialling Google's hosts, which are refused.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by Playwright, which never downloads a browser of its own."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/e2e.sh installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()

