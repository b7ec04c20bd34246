"""``make run``: start the supervision tree on the embedded example config, spawn demo agents, talk to them.

Runs the real daemon (``openfang-supervisor``) as a child process with its log in the data dir, waits until
it answers, shows the tree, spawns the demo agents shipped in ``openfang/data/agents/`` (scripted model, so
no API key or network is needed), holds a short conversation, prints where to look, and then keeps the
daemon running until Ctrl-C (``--once`` stops it after the demo).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from openfang.cli import render
from openfang.control.config import ClusterSection, load_config
from openfang.protocol.client import Client
from openfang.protocol.errors import OpenFangError

DATA = Path(__file__).resolve().parent / "data"
CONVERSATION = [
    ("greeter", "Hello! Who are you?"),
    ("greeter", "What can you do?"),
    ("clock", "What time is it?"),
]


def _banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def _wait_until_up(client: Client, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Until the status says ready (the whole tree started, every worker connected to the gateway)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the supervisor exited with {proc.returncode}; see {log_path}")
        try:
            if client.request("status", timeout=0.5).get("ready") and _workers_answer(client):
                return
        except OpenFangError:
            pass
        time.sleep(0.05)
    sys.exit(f"the supervisor did not come up within {timeout}s; see {log_path}")


def _workers_answer(client: Client) -> bool:
    nodes = _walk(client.request("tree")["children"])
    # The running workers (an elastic pool's stopped members start under load, not for the demo).
    workers = [n["id"] for n in nodes if n.get("cpu") is not None and n.get("state") == "running"]
    for worker in workers:
        client.request("worker.ping", {"worker": worker}, timeout=0.5)
    return bool(workers)


def _walk(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        out.append(node)
        out.extend(_walk(node.get("children") or []))
    return out


def _spawn_demo_agents(client: Client) -> dict[str, str]:
    ids: dict[str, str] = {}
    for manifest in sorted((DATA / "agents").glob("*.toml")):
        reply: dict[str, Any] = client.request(
            "agent.spawn", {"manifest": manifest.read_text(), "manifest_path": str(manifest)}
        )
        ids[manifest.stem] = reply["agent_id"]
        print(f"spawned {reply['agent_id']:<24} on {reply.get('worker')}  ({manifest.name})")
    return ids


def _http_chat(base_url: str, model: str, text: str) -> str:
    """One POST /v1/chat/completions, as any OpenAI client would send it."""
    import json
    import urllib.request

    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.load(response)
    answer = reply["choices"][0]["message"]["content"]
    return f"POST {base_url}/v1/chat/completions\nyou -> {model}: {text}\n{model} -> you: {answer}"


def _free_http_port(config_path: str, data_dir: Path) -> str:
    """The config to run: ``config_path``, or a copy in the data dir whose [http] port is free.

    ``make run`` must not fail because something (another demo) already listens on 127.0.0.1:8470.
    """
    config = load_config(config_path, data_dir=str(data_dir))
    if not config.http.enabled:
        return config_path
    with socket.socket() as probe:
        try:
            probe.bind((config.http.host, config.http.port))
            return config_path
        except OSError:
            pass
    with socket.socket() as probe:
        probe.bind((config.http.host, 0))
        port = probe.getsockname()[1]
    text = Path(config_path).read_text(encoding="utf-8")
    text = re.sub(r'(?m)^listen = "[^"]*"', f'listen = "{config.http.host}:{port}"', text, count=1)
    text = re.sub(r'(?m)^data_dir = "[^"]*"', f'data_dir = "{data_dir}"', text, count=1)
    copy = data_dir / "cluster.toml"
    copy.write_text(text, encoding="utf-8")
    print(f"port {config.http.port} is in use: the HTTP face listens on {config.http.host}:{port} ({copy})")
    return str(copy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openfang.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DATA / "cluster.toml"), help="cluster.toml to run")
    parser.add_argument(
        "--data-dir", default=ClusterSection().data_dir, help="where the memory, sockets and logs live"
    )
    parser.add_argument("--once", action="store_true", help="stop the tree after the demo instead of waiting")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    args.config = _free_http_port(args.config, data_dir)
    config = load_config(args.config, data_dir=str(data_dir))
    log_path = data_dir / "supervisor.log"
    cmd = [
        sys.executable,
        "-m",
        "openfang.control.daemon",
        "--config",
        args.config,
        "--data-dir",
        str(data_dir),
        "--log-format",
        "json",
    ]
    _banner("starting openfang-supervisor")
    print(" ".join(cmd))
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        with Client(config.control.endpoint, timeout=10.0) as client:
            _wait_until_up(client, proc, log_path, timeout=30)
            print(f"up in {(time.monotonic() - started) * 1000:.0f} ms (pid {proc.pid})")
            _banner("supervision tree (openfang tree)")
            print(render.tree(client.request("tree")))
            _banner("demo agents (scripted model: no API key, no network)")
            ids = _spawn_demo_agents(client)
            _banner("a conversation")
            for name, text in CONVERSATION:
                if name not in ids:
                    continue
                reply = client.request("agent.send", {"agent_id": ids[name], "text": text})
                print(f"you -> {name}: {text}\n{name} -> you: {reply.get('reply')}\n")
            print(render.agents(client.request("agent.list")))
            if config.http.enabled and "greeter" in ids:
                _banner("the same agent over HTTP (the OpenAI-compatible API)")
                print(_http_chat(config.http.base_url, "greeter", "Hello! Who are you?"))
        ctl = Path(sys.executable).parent / "openfang"
        _banner("where to look")
        print(f"supervisor log (JSON)  {log_path}")
        print(f"data dir               {data_dir}")
        print(f"control endpoint       {config.control.endpoint}")
        print(f"event stream           {config.control.events}")
        if config.http.enabled:
            url = config.http.base_url
            print(f"HTTP face              {url}   (docs/interop.md)")
            print(f"  dashboard            {url}/   (open it in a browser)")
            print(f"  Prometheus metrics   {url}/metrics   (docs/operations.md)")
            print(f"  OpenAI-compatible    {url}/v1/models   {url}/v1/chat/completions")
            print(f"  MCP (streamable)     {url}/mcp")
            print(f"  A2A cluster card     {url}/.well-known/agent-card.json")
            print(f"  A2A agent            {url}/a2a/greeter")
            print(f"  A2A agent card       {url}/a2a/greeter/.well-known/agent-card.json")
        print("try, in another terminal (openfang finds this daemon by itself: it is the only one running;")
        print(f"otherwise pass --data-dir {data_dir} or --endpoint {config.control.endpoint}):")
        print(f"  {ctl} status          # ready once every worker is connected")
        print(f"  {ctl} tree            # the supervision tree: pids, pinned cores, RSS, restarts")
        print(f"  {ctl} events          # follow lifecycle events (child, agent state, config)")
        print(f"  {ctl} agent list")
        print(f"  {ctl} agent send {next(iter(ids.values()), 'AGENT')} 'who are you?'")
        print(f"  tail -f {log_path}   # the JSON log: every process, every event once")
        print("  ps -eo pid,args | grep 'openfang:'   # each process by name: supervisor, control, ...")
        print("  kill -9 <a worker pid from 'tree'>   # and watch it come back")
        if config.http.enabled:
            url = config.http.base_url
            print(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\")
            body = '{"model": "greeter", "messages": [{"role": "user", "content": "who are you?"}]}'
            print(f"       -d '{body}'")
            print(f"  {ctl} mcp serve --endpoint {config.control.endpoint}   # MCP over stdio")
        if args.once:
            return _stop(proc)
        print("\nthe tree keeps running; Ctrl-C stops it (in reverse order, gracefully)")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return _stop(proc)
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"supervisor stopped (exit status {proc.returncode})")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
