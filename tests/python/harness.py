"""Running the real binaries for the end-to-end suite: the mock upstream, the `tollgate` gateway
and its `keys` CLI, plus the gateway config every test module runs with.

Everything here waits with a deadline; nothing sleeps as a way to synchronise.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from openai import OpenAI

REPO_ROOT = Path(__file__).resolve().parents[2]

# The provider key the mock upstream demands; the gateway reads it from MOCK_*_KEY env vars.
PROVIDER_KEY = "mock-secret"
# What the misconfigured `badkey` provider sends instead (the mock answers 401).
WRONG_PROVIDER_KEY = "wrong-provider-key-5d1e"

READY_TIMEOUT_SECS = 60.0
CLI_TIMEOUT_SECS = 60.0


def binary(env_var: str, default: str) -> Path:
    """A binary from the environment, or the debug build in the repo's target dir."""
    path = Path(os.environ.get(env_var, REPO_ROOT / default))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def tollgate_bin() -> Path:
    return binary("TOLLGATE_BIN", "target/debug/tollgate")


def mock_upstream_bin() -> Path:
    return binary("MOCK_UPSTREAM_BIN", "target/debug/mock-upstream")


class ManagedProcess:
    """A child process whose stdout and stderr are drained by threads (so it never blocks on a
    full pipe), which announces readiness with one `READY k=v ...` stdout line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._ready: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
            errors="replace",
        )
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str], watch_ready: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            sink.append(line)
            if watch_ready and line.startswith("READY"):
                self._ready.put(line.strip())
        if watch_ready:
            self._ready.put(None)

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECS) -> dict[str, str]:
        """Waits for the READY line and returns its `k=v` fields."""
        try:
            line = self._ready.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{self.name} printed no READY line within {timeout}s\n{self.logs()}") from None
        if line is None:
            code = self.proc.wait(timeout=5)
            # stdout closed first; let the stderr pump read the last words before showing them.
            for t in self._threads:
                t.join(timeout=5)
            raise RuntimeError(f"{self.name} exited with {code} before READY\n{self.logs()}")
        return dict(field.split("=", 1) for field in line.split()[1:])

    def logs(self, last: int = 60) -> str:
        out = "\n".join(self.stdout_lines[-last:])
        err = "\n".join(self.stderr_lines[-last:])
        return f"--- {self.name} {' '.join(self.argv)}\n--- stdout:\n{out}\n--- stderr:\n{err}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=2)


class MockUpstream:
    """The `mock-upstream` binary (OpenAI flavour for most models, DeepSeek for `deepseek*`)."""

    def __init__(self, api_key: str = PROVIDER_KEY):
        self.process = ManagedProcess("mock-upstream", [str(mock_upstream_bin()), "--addr", "127.0.0.1:0", "--api-key", api_key])
        ready = self.process.wait_ready()
        self.addr = ready["http"]
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.base_url = f"http://{self.addr}"

    def requests(self) -> list[dict[str, Any]]:
        """Every chat request the mock received: `{"path", "authorization", "body"}`."""
        resp = httpx.get(f"{self.base_url}/_mock/requests", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def requests_with(self, marker: str) -> list[dict[str, Any]]:
        """The received chat requests whose body mentions `marker` (tests put a nonce in prompts)."""
        return [r for r in self.requests() if marker in json.dumps(r["body"])]

    def single_request_with(self, marker: str) -> dict[str, Any]:
        found = self.requests_with(marker)
        assert len(found) == 1, f"expected exactly one upstream request with {marker!r}, got {len(found)}: {found}"
        return found[0]

    def hold_status(self, name: str) -> dict[str, Any]:
        """`{"arrived", "waiting", "released"}` of the requests held by `[hold=NAME]` or
        `[hold_after_first=NAME]`."""
        resp = httpx.get(f"{self.base_url}/_mock/holds/{name}", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def wait_held(self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30) -> None:
        """Waits until the hold's status satisfies `predicate` (e.g. n requests waiting)."""
        wait_until(lambda: predicate(self.hold_status(name)), timeout=timeout, what=f"hold {name}: {what}")

    def release(self, name: str) -> None:
        """Lets every request held under NAME answer, now and later."""
        httpx.post(f"{self.base_url}/_mock/holds/{name}/release", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.stop()


def gateway_config(tmp_dir: Path, mock_port: int) -> str:
    """The config every test module's gateway runs with (docs/config-reference.md)."""
    mock = f"http://127.0.0.1:{mock_port}"
    db = tmp_dir / "tollgate.db"
    flash_prices = 'input_price = 0.22\ncached_input_price = 0.005\noutput_price = 0.44'
    return f"""
[server]
http_addr = "127.0.0.1:0"
grpc_addr = "127.0.0.1:0"
max_body_bytes = {MAX_BODY_BYTES}
shutdown_grace_secs = 1

[database]
url = "sqlite://{db}"

[[providers]]
name = "deepseek"
kind = "deepseek"
base_url = "{mock}"
api_key_env = "MOCK_DEEPSEEK_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}/v1"
api_key_env = "MOCK_OPENAI_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 20
request_timeout_secs = 60

# Same mock, but the upstream must produce its first event within 1 s and finish within 3 s:
# the 504 tests.
[[providers]]
name = "slow"
kind = "deepseek"
base_url = "{mock}"
api_key_env = "MOCK_DEEPSEEK_KEY"
connect_timeout_secs = 5
first_token_timeout_secs = 1
request_timeout_secs = 3

# Same mock with a key it rejects: the upstream-401 tests.
[[providers]]
name = "badkey"
kind = "deepseek"
base_url = "{mock}"
api_key_env = "MOCK_WRONG_KEY"

# A provider whose key variable is not set in the gateway's environment.
[[providers]]
name = "nokey"
kind = "deepseek"
base_url = "{mock}"
api_key_env = "MOCK_UNSET_KEY"

[[models]]
id = "deepseek-nokey"
provider = "nokey"
upstream_model = "deepseek-v4-flash"
owned_by = "deepseek"
created = {CREATED}
context_length = 1000000
max_output_tokens = 384000
{flash_prices}
thinking = "optional"

[[models]]
id = "deepseek-v4-flash"
provider = "deepseek"
upstream_model = "deepseek-v4-flash"
owned_by = "deepseek"
created = {CREATED}
context_length = 1000000
max_output_tokens = 384000
{flash_prices}
thinking = "optional"

[[models]]
id = "deepseek-v4-pro"
provider = "deepseek"
upstream_model = "deepseek-v4-pro"
owned_by = "deepseek"
created = {CREATED}
context_length = 1000000
max_output_tokens = 384000
input_price = 2.80
cached_input_price = 0.024
output_price = 5.60
thinking = "optional"

[[models]]
id = "gpt-4.1-mini"
provider = "openai"
upstream_model = "gpt-4.1-mini"
owned_by = "openai"
created = {CREATED}
context_length = 1047576
max_output_tokens = 32768
input_price = 0.40
cached_input_price = 0.10
output_price = 1.60
thinking = "none"

[[models]]
id = "deepseek-slow"
provider = "slow"
upstream_model = "deepseek-v4-flash"
owned_by = "deepseek"
created = {CREATED}
context_length = 1000000
max_output_tokens = 384000
{flash_prices}
thinking = "optional"

[[models]]
id = "deepseek-badkey"
provider = "badkey"
upstream_model = "deepseek-v4-flash"
owned_by = "deepseek"
created = {CREATED}
context_length = 1000000
max_output_tokens = 384000
{flash_prices}
thinking = "optional"

[[aliases]]
id = "deepseek-chat"
target = "deepseek-v4-flash"
thinking = false

[[aliases]]
id = "deepseek-reasoner"
target = "deepseek-v4-flash"
thinking = true

[[aliases]]
id = "gpt-4o"
target = "deepseek-v4-flash"

[[aliases]]
id = "gpt-4o-mini"
target = "deepseek-v4-flash"

[[tiers]]
name = "basic"
rpm = 10
monthly_requests = 1000

[[tiers]]
name = "pro"
rpm = 30
monthly_requests = 3000

[[tiers]]
name = "enterprise"
rpm = 100
monthly_requests = 10000

[[tiers]]
name = "tight_rpm"
rpm = 3
monthly_requests = 1000

[[tiers]]
name = "tight_month"
rpm = 100
monthly_requests = 5
"""


# Facts of the config above that tests assert against.
MAX_BODY_BYTES = 4 * 1024 * 1024
CREATED = 1745971200
MODEL_IDS = {"deepseek-v4-flash", "deepseek-v4-pro", "gpt-4.1-mini", "deepseek-slow", "deepseek-badkey", "deepseek-nokey"}
ALIASES = {
    "deepseek-chat": "deepseek-v4-flash",
    "deepseek-reasoner": "deepseek-v4-flash",
    "gpt-4o": "deepseek-v4-flash",
    "gpt-4o-mini": "deepseek-v4-flash",
}
# USD per 1M tokens, as decimal strings: (input, cached_input, output).
PRICES = {
    "deepseek-v4-flash": ("0.22", "0.005", "0.44"),
    "deepseek-v4-pro": ("2.80", "0.024", "5.60"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "deepseek-slow": ("0.22", "0.005", "0.44"),
    "deepseek-badkey": ("0.22", "0.005", "0.44"),
    "deepseek-nokey": ("0.22", "0.005", "0.44"),
}
OWNED_BY = {
    "deepseek-v4-flash": "deepseek",
    "deepseek-v4-pro": "deepseek",
    "gpt-4.1-mini": "openai",
    "deepseek-slow": "deepseek",
    "deepseek-badkey": "deepseek",
    "deepseek-nokey": "deepseek",
}
LIMITS = {
    "deepseek-v4-flash": (1000000, 384000),
    "deepseek-v4-pro": (1000000, 384000),
    "gpt-4.1-mini": (1047576, 32768),
    "deepseek-slow": (1000000, 384000),
    "deepseek-badkey": (1000000, 384000),
    "deepseek-nokey": (1000000, 384000),
}
TIERS = {
    "basic": (10, 1000),
    "pro": (30, 3000),
    "enterprise": (100, 10000),
    "tight_rpm": (3, 1000),
    "tight_month": (100, 5),
}


@dataclass
class ApiKey:
    secret: str
    key_id: str | None
    tier: str
    name: str


def parse_created_key(stdout: str, list_keys: Callable[[], str]) -> tuple[str, str | None]:
    """Reads `tollgate keys create` output: the secret is the last line; the id is printed
    earlier (`id: X`, `id=X`, `key_id ...`), else found in `keys list` on the line that shows
    the secret's prefix. The one place to adapt if the CLI's wording changes."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    assert lines, "keys create printed nothing"
    secret = lines[-1]
    patterns = [
        r"\b(?:key[_ -]?)?id\b\s*[:=]?\s*\"?([A-Za-z0-9][A-Za-z0-9_\-]*)",  # "id: X", "key_id=X"
        r"\bkey\s+([0-9a-fA-F][0-9a-fA-F\-]{7,})\b",  # "created key 0192f0c4-..."
    ]
    for pattern in patterns:
        for line in lines[:-1]:
            m = re.search(pattern, line, re.IGNORECASE)
            if m and not m.group(1).startswith("sk-"):
                return secret, m.group(1)
    return secret, key_id_from_list(list_keys(), secret)


def key_line_in_list(listing: str, secret: str) -> str | None:
    """The line of `keys list` output that shows this secret's prefix."""
    for line in listing.splitlines():
        for token in re.split(r"[\s|,;]+", line):
            prefix = token.strip("\"'`").rstrip(".…*")
            if len(prefix) >= 6 and prefix.startswith("sk-") and secret.startswith(prefix):
                return line
    return None


def key_id_from_list(listing: str, secret: str) -> str | None:
    line = key_line_in_list(listing, secret)
    if line is None:
        return None
    tokens = [t for t in re.split(r"[\s|,;]+", line) if t]
    return tokens[0] if tokens else None


class Gateway:
    """One `tollgate serve` process on ports chosen by the OS, with its config and database in
    a temporary directory, and the `tollgate keys` CLI against the same config."""

    def __init__(
        self,
        tmp_dir: Path,
        mock: MockUpstream,
        extra_config: str = "",
        env: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        """`env` (or `extra_env`) adds variables, e.g. `TOLLGATE__DATABASE__URL` to run on another
        database, or the admin token."""
        self.tmp_dir = tmp_dir
        self.config_path = tmp_dir / "tollgate.toml"
        self.db_path = tmp_dir / "tollgate.db"
        self.config_path.write_text(gateway_config(tmp_dir, mock.port) + extra_config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE__")}
        self.env.update(
            MOCK_DEEPSEEK_KEY=PROVIDER_KEY,
            MOCK_OPENAI_KEY=PROVIDER_KEY,
            MOCK_ANTHROPIC_KEY=PROVIDER_KEY,
            MOCK_WRONG_KEY=WRONG_PROVIDER_KEY,
            RUST_BACKTRACE="1",
        )
        self.env.update(env or {})
        self.env.update(extra_env or {})
        self.start()

    def start(self) -> None:
        """Starts (or, after `stop`/`kill`, restarts) the process on fresh ports."""
        self.process = ManagedProcess(
            "tollgate",
            [
                str(tollgate_bin()),
                "serve",
                "--config",
                str(self.config_path),
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ],
            env=self.env,
        )
        ready = self.process.wait_ready()
        self.http_addr = ready["http"]
        self.grpc_addr = ready["grpc"]
        self.http_base = f"http://{self.http_addr}"
        self.base_url = f"{self.http_base}/v1"

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        self.process.proc.kill()
        self.process.proc.wait(timeout=10)

    def logs(self) -> str:
        return self.process.logs()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs `tollgate <group> <command> --config FILE <rest...>`."""
        group, command, *rest = args
        argv = [str(tollgate_bin()), group, command, "--config", str(self.config_path), *rest]
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=CLI_TIMEOUT_SECS,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited with {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def create_key(self, tier: str = "enterprise", name: str | None = None, *extra: str) -> ApiKey:
        """`tollgate keys create`; `extra` is passed on (`--balance 0.05`, `--rpm 2`, `--expires-at ...`)."""
        name = name or f"e2e-{tier}-{time.monotonic_ns()}"
        done = self.cli("keys", "create", "--tier", tier, "--name", name, *extra)
        secret, key_id = parse_created_key(done.stdout, self.list_keys)
        assert secret.startswith("sk-"), f"last line of keys create is not a secret: {done.stdout!r}"
        return ApiKey(secret=secret, key_id=key_id, tier=tier, name=name)

    def list_keys(self) -> str:
        return self.cli("keys", "list").stdout

    def revoke_key(self, key: ApiKey) -> subprocess.CompletedProcess[str]:
        assert key.key_id, "could not find the key's id in `keys create` or `keys list` output"
        return self.cli("keys", "revoke", key.key_id)

    def usage(self, key: ApiKey) -> httpx.Response:
        """`GET /v1/dashboard/billing/usage` for this key."""
        return httpx.get(
            f"{self.base_url}/dashboard/billing/usage",
            headers={"Authorization": f"Bearer {key.secret}"},
            timeout=30,
        )


def make_client(gateway: Gateway, key: ApiKey | str) -> OpenAI:
    """The official SDK pointed at the gateway, without retries so every status is seen."""
    secret = key.secret if isinstance(key, ApiKey) else key
    return OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0, timeout=30)


def auth(key: ApiKey | str) -> dict[str, str]:
    secret = key.secret if isinstance(key, ApiKey) else key
    return {"Authorization": f"Bearer {secret}"}


def sqlite_rows(db_path: Path, sql: str, *args) -> list[tuple]:
    """The rows of a read-only query on a gateway's SQLite database."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Polls `predicate` until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(interval)


def nonce() -> str:
    """A short random marker, so a test finds its own requests among those the mock recorded."""
    return uuid.uuid4().hex[:12]


def user(text: str) -> list[dict]:
    """`messages` of one user turn."""
    return [{"role": "user", "content": text}]


def extra(obj) -> dict:
    """The fields an OpenAI SDK object carries beyond its declared ones (`reasoning_details`...)."""
    return obj.model_extra or {}


def stalled_stream(gateway: "Gateway", secret: str, text: str, timeout: float = 30) -> socket.socket:
    """A streamed chat opened by a client that then stops reading: a raw socket with a small
    receive buffer, past the answer's status line (200). The caller closes it."""
    payload = json.dumps({"model": "deepseek-chat", "messages": user(text), "stream": True}).encode()
    host, port = gateway.http_addr.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(timeout)
        sock.connect((host, int(port)))
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        sock.sendall(head + payload)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    except BaseException:
        sock.close()
        raise
    return sock

