"""Starts a real hushd for the interop tests (binary from $HUSHD_BIN), once on SQLite and once
on a fresh PostgreSQL database (127.0.0.1:5432, user postgres, trust auth)."""

import contextlib
import os
import pathlib
import queue
import secrets
import subprocess
import threading
import time

import pytest


def _hushd_bin() -> str:
    path = os.environ.get("HUSHD_BIN")
    if not path:
        repo = pathlib.Path(__file__).resolve().parents[3]
        target = os.environ.get("CARGO_TARGET_DIR", str(repo / "target"))
        path = str(pathlib.Path(target) / "debug" / "hushd")
    if not os.access(path, os.X_OK):
        pytest.fail(f"hushd binary not found at {path}; set HUSHD_BIN")
    return path


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql],
        check=True,
        capture_output=True,
        text=True,
    )


@contextlib.contextmanager
def _database(backend: str, tmp_path: pathlib.Path):
    """A database URL for `backend`. PostgreSQL databases are named like the Rust tests' ones
    (`hush_<kind>_<pid>_<random>`), so a run that died is swept by the next Rust test run."""
    if backend == "sqlite":
        yield f"sqlite://{tmp_path}/hushd.db"
        return
    name = f"hush_interop_{os.getpid()}_{secrets.token_hex(8)}"
    _psql(f"CREATE DATABASE {name}")
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def hushd(request, tmp_path):
    """A development hushd with open registration on a free loopback port, on each storage
    backend; yields its URL."""
    with _database(request.param, tmp_path) as database_url:
        yield from _run_hushd(tmp_path, database_url)


def _run_hushd(tmp_path: pathlib.Path, database_url: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUSHD_")}
    env.update(
        {
            "HUSHD_LISTEN": "127.0.0.1:0",
            "HUSHD_SERVER_NAME": "interop.test",
            "HUSHD_REGISTRATION": "open",
            "HUSHD_DATABASE_URL": database_url,
            "HUSHD_SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
            "RUST_LOG": env.get("RUST_LOG", "warn"),
        }
    )
    proc = subprocess.Popen(
        [_hushd_bin()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stdout], daemon=True
    ).start()
    url = None
    deadline = time.monotonic() + 20
    while url is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("listening on "):
            url = line[len("listening on ") :].strip().split(", ")[0]
    if url is None:
        proc.kill()
        pytest.fail(f"hushd did not start: {proc.stderr.read()}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=20) == 0, "hushd did not shut down cleanly"
        finally:
            if proc.poll() is None:
                proc.kill()
