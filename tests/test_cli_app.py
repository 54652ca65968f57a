"""`solu app` and `solu demo` from the command line, and the Dockerfile's commands."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from helpers.browser_app import free_port, wait_healthy
from explorer.commands import streamlit_command
from explorer.urls import DEFAULT_HOST, DEFAULT_PORT
from solu.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "solu.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"just some text\n", "is not a DuckDB database"),
    ("empty-duckdb", "is an empty DuckDB file, not a solu index"),
    ("other-duckdb", "is not a solu index"),
])
def test_app_refuses_a_bad_database_in_one_line(tmp_path, content, message):
    db = tmp_path / "index.duckdb"
    if content == "empty-duckdb":
        duckdb.connect(str(db)).close()
    elif content == "other-duckdb":
        con = duckdb.connect(str(db))
        con.execute("CREATE TABLE t(x INTEGER)")
        con.close()
    elif content is not None:
        db.write_bytes(content)
    result = run_cli("app", "--db", str(db))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solu app: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_app_refuses_a_busy_port(tmp_path, capsys):
    from helpers.synthetic_index import build_synthetic_index

    db = build_synthetic_index(tmp_path / "index.duckdb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--db", str(db), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_app_listens_on_localhost_unless_told(tmp_path):
    args = build_parser().parse_args(["app", "--db", "x.duckdb"])
    assert (args.host, args.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 8501)
    cmd, env = streamlit_command(tmp_path / "x.duckdb", args.host, args.port)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert Path(cmd[cmd.index("run") + 1]) == ROOT / "explorer" / "app.py"
    assert env["SOLU_DB"] == str((tmp_path / "x.duckdb").resolve())


def dockerfile_commands() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text()
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^(ENTRYPOINT|CMD) (\[.*\])$", text, re.M)}


def test_dockerfile_runs_the_demo_as_a_non_root_user_on_all_interfaces():
    text = (ROOT / "Dockerfile").read_text()
    commands = dockerfile_commands()
    assert commands["ENTRYPOINT"] == ["solu"]
    args = build_parser().parse_args(commands["CMD"])
    assert args.command == "demo" and args.host == "0.0.0.0" and f"EXPOSE {args.port}" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert text.index("USER") < text.index("ENTRYPOINT")
    pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={pin}" in text
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        if source != "README.md":  # written by the maintainers
            assert (ROOT / source).exists(), source


def test_dockerfile_documents_a_working_app_command():
    text = (ROOT / "Dockerfile").read_text()
    usage = re.search(r"solu-explorer (app .*)$", text, re.M).group(1).split()
    args = build_parser().parse_args(usage)
    assert args.command == "app" and args.host == "0.0.0.0" and args.db == Path("/data/index.duckdb")


def wait_for_url(proc, deadline: float) -> str:
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"solu demo exited with {proc.returncode}")
            continue
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if match:
            return match.group(1)
    raise AssertionError("solu demo printed no URL in time")


def test_demo_quick_builds_everything_and_serves_it(tmp_path):
    """The whole demo with tiny token counts: corpus, two models, index, app."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "solu.cli", "demo", "--quick", "--tokens", "4096",
                             "--index-tokens", "4096", "--out", str(tmp_path / "demo"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "demo.err", "w"), text=True, env=env)
    try:
        url = wait_for_url(proc, time.monotonic() + 300)
        assert url == f"http://127.0.0.1:{port}"
        wait_healthy(f"http://127.0.0.1:{port}", proc, tmp_path / "demo.err", 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    progress = (tmp_path / "demo.err").read_text()
    assert all(f"[{i}/5]" in progress for i in range(1, 6)), progress
    con = duckdb.connect(str(tmp_path / "demo" / "index.duckdb"), read_only=True)
    models = con.execute("SELECT model_id, act_fn FROM models ORDER BY model_id").fetchall()
    scored = con.execute("SELECT count(DISTINCT model_id) FROM current_concept_scores").fetchall()
    con.close()
    assert models == [("gelu-1l", "gelu"), ("solu-1l", "solu_ln")]
    assert scored == [(2,)] and "neurons labelled base64" in progress  # the demo ran autolabel on both
    links = re.findall(r"in the app: (\S+)\)", progress)
    assert all(link.startswith(f"{url}/neuron?model=") for link in links), links  # full URLs of this app
    tok = [(tmp_path / "demo" / m / "tokenizer.json").read_text() for m in ("gelu-1l", "solu-1l")]
    assert tok[0] == tok[1]  # both models read the same tokens



def test_a_host_beyond_loopback_is_warned_about(tmp_path, monkeypatch, capsys):
    """serve() says on stderr that the explorer is then open to the network with no login;
    on loopback it says nothing of the kind. (execve is replaced: nothing starts.)"""
    import os

    from explorer.commands import serve

    started = []
    monkeypatch.setattr(os, "execve", lambda *a: started.append(a))
    for host, warned in (("0.0.0.0", True), ("127.0.0.1", False), ("::1", False)):
        serve(tmp_path / "x.duckdb", host, 8501)
        err = capsys.readouterr().err
        assert ("reachable from the network, with no login" in err) == warned, (host, err)
    assert len(started) == 3


def test_app_url_is_where_a_browser_here_reaches_the_app():
    from explorer.urls import app_url

    assert app_url() == f"http://127.0.0.1:{DEFAULT_PORT}"
    for host in ("127.0.0.1", "localhost", "0.0.0.0", "::"):
        assert app_url(host, 8600) == "http://127.0.0.1:8600"
    assert app_url("::1", 8600) == "http://[::1]:8600" and app_url("10.1.2.3", 80) == "http://10.1.2.3:80"


def test_the_demo_prints_full_neuron_urls(tmp_path):
    from explorer.urls import app_url
    from explorer.demo import base64_neurons
    from index.measure.autolabel import autolabel
    from helpers.measure_db import build_measure_db

    db = build_measure_db(tmp_path / "index.duckdb", top_k=20)
    autolabel(db)
    links = re.findall(r"in the app: (\S+)\)", "\n".join(base64_neurons(db, app_url("0.0.0.0", 8600))))
    assert links and all(link.startswith("http://127.0.0.1:8600/neuron?model=") for link in links), links
