"""The PostgreSQL and Redis servers scripts/services.sh starts, for the test modules that run
gateways on them: their URLs, the module-level skip when they are absent (an error in CI), and
`psql` to read the database."""

from __future__ import annotations

import os
import subprocess

import pytest

POSTGRES_URL = os.environ.get("TOLLGATE_TEST_POSTGRES_URL", "")
REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL", "")
PSQL = os.environ.get("TOLLGATE_TEST_PSQL", "psql")


def require() -> None:
    """Call at module level: skips the module without both servers (fails in CI)."""
    if not (POSTGRES_URL and REDIS_URL):
        if os.environ.get("CI"):
            raise RuntimeError("TOLLGATE_TEST_POSTGRES_URL and TOLLGATE_TEST_REDIS_URL must be set: run scripts/e2e.sh")
        pytest.skip("no PostgreSQL/Redis: run through scripts/e2e.sh", allow_module_level=True)


def psql(sql: str) -> list[list[str]]:
    """The rows of one query, as lists of strings."""
    done = subprocess.run(
        [PSQL, POSTGRES_URL, "-At", "-F", "\t", "-c", sql], capture_output=True, text=True, timeout=30, check=True
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def redis_command(*args: str) -> bytes:
    """Sends one command to the Redis at REDIS_URL (`redis://host:port`) in RESP and returns its
    first reply line (e.g. `+OK`)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(REDIS_URL)
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), timeout=10) as sock:
        sock.sendall(request.encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]
