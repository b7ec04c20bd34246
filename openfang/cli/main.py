"""``openfang``: the control client. Every verb talks to a running daemon over its control endpoint.

How the daemon is found (``--endpoint``, ``--config`` with ``--data-dir``, ``$OPENFANG_*``, or the run
record of the daemon ``make run`` started) is :mod:`openfang.cli.connect`. Every verb takes ``--json`` for
machine-readable output. Requests are signed (PROTOCOL.md section 1.5) with ``--sign-key FILE`` (or
``$OPENFANG_SIGN_KEY``), key id ``--sign-key-id`` (default: the file name without its extension) and
``--sign-alg`` (default hmac-sha256); without them, with ``--config`` naming a cluster whose
``[security.signing]`` requires signatures, the first HMAC key of its key ring that this user can read.
Exit codes: 0 success, 1 the daemon answered with an error (printed with its code) or a check failed, 2 usage
or config error, 3 no daemon at the endpoint or no answer in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openfang import __version__
from openfang.cli import connect, render
from openfang.cli.catalog import add_catalog_verbs
from openfang.cli.connect import Unreachable, UsageError
from openfang.cli.schedule_cmd import add_schedule_verbs
from openfang.cli.top import add_top_verb
from openfang.protocol.bodies import AGENT_STATES
from openfang.protocol.errors import ConfigError, OpenFangError, Timeout

EXIT_REMOTE, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
Handler = Callable[[argparse.Namespace], int]


def resolve_endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """(control endpoint, events endpoint or None) from the flags and environment (see connect.resolve)."""
    target = connect.resolve(args)
    return target.endpoint, target.events


def request(args: argparse.Namespace, msg_type: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one request and return the reply body (raises RemoteError / Timeout / Unreachable)."""
    with connect.client(args) as client:
        reply: dict[str, Any] = client.request(msg_type, body or {})
        return reply


ALL_PAGE = 2_000  # agents per page when --all walks every page without --limit


def list_agents(args: argparse.Namespace) -> dict[str, Any]:
    """One page of ``agent.list`` (``--limit``/``--after``/``--state``/``--worker``), or every page
    (``--all``: walked with ``after`` = each reply's ``next`` on one connection, merged into one body)."""
    body: dict[str, Any] = {}
    for key in ("limit", "after", "state", "worker"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    if not args.all:
        return request(args, "agent.list", body)
    body.setdefault("limit", ALL_PAGE)
    merged: dict[str, Any] = {"agents": [], "errors": [], "workers": [], "next": None, "total": 0}
    with connect.client(args) as client:
        while True:
            page: dict[str, Any] = client.request("agent.list", body)
            merged["agents"].extend(page.get("agents") or [])
            merged["errors"].extend(e for e in page.get("errors") or [] if e not in merged["errors"])
            merged["workers"] = merged["workers"] or page.get("workers") or []
            merged["total"] = page.get("total", len(merged["agents"]))
            if not page.get("next"):
                return merged
            body["after"] = page["next"]


def output(args: argparse.Namespace, body: Any, human: Callable[[Any], str]) -> int:
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True, default=str))
    else:
        print(human(body))
    return 0


# -- verbs ---------------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Show whether the daemon is ready (running, every worker connected), its uptime, children,
    endpoints, and the memory store with its embedder and SQLite driver."""
    with connect.client(args) as client:
        body: dict[str, Any] = client.request("status")
        try:
            stats = client.request("memory.stats", {})
        except OpenFangError as exc:
            body["memory"] = f"unavailable ({exc.code}: {exc.message})"
        else:
            counts = stats.get("counts") or {}
            body["memory"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            embedder = str(stats.get("embedder") or "?")
            fallback = embedder.startswith("hash")
            body["embedder"] = embedder + (" (fallback: no semantic model installed)" if fallback else "")
            if stats.get("sqlite"):
                body["sqlite"] = stats["sqlite"]  # the memory store's driver (route, SQLite version)
    return output(args, body, render.status)


def cmd_tree(args: argparse.Namespace) -> int:
    """Show the supervision tree: id, pid, pinned core, RSS, uptime, restarts."""
    return output(args, request(args, "tree"), render.tree)


def cmd_ping(args: argparse.Namespace) -> int:
    """Round trip to the gateway (or to one worker with --worker)."""
    if args.worker:
        return output(args, request(args, "worker.ping", {"worker": args.worker}), render.kv)
    return output(args, request(args, "ping"), render.kv)


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the whole tree in reverse order and end the daemon."""
    return output(args, request(args, "stop"), lambda b: "stopping")


def cmd_reload(args: argparse.Namespace) -> int:
    """Re-read cluster.toml and apply the difference (a bad config is rejected, the tree untouched)."""
    return output(args, request(args, "reload"), render.reload)


def cmd_events(args: argparse.Namespace) -> int:
    """Follow the event stream (child started/exited/restarted, escalations, agent states)."""
    prefixes = tuple(args.kind or ())
    seen = 0
    with connect.client(args, with_events=True) as client:
        for event in client.events():
            if prefixes and not str(event.get("kind", "")).startswith(prefixes):
                continue
            print(
                json.dumps(event, sort_keys=True, default=str) if args.json else render.event(event),
                flush=True,
            )
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Create CURVE keypairs (server and a client) for tcp:// endpoints."""
    from openfang.protocol.curve import generate_keys

    files = generate_keys(Path(args.keys_dir_out), args.name)
    made = {k: str(v) for k, v in dataclasses.asdict(files).items() if v is not None}
    return output(args, made, render.kv)


def cmd_child(args: argparse.Namespace) -> int:
    """Manage a supervisor's dynamic children (start/terminate/restart/delete/which/count)."""
    body: dict[str, Any] = {"path": args.path}
    if args.child_op in ("terminate", "restart", "delete"):
        body["id"] = args.id
    if args.child_op == "start":
        body["spec"] = json.loads(args.spec)
    reply = request(args, f"child.{args.child_op}", body)
    return output(args, reply, render.kv)


def cmd_security_report(args: argparse.Namespace) -> int:
    """The state of every security layer of the running system."""
    return output(args, request(args, "security.report"), render.security)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the hash chain of the audit log: any edited, deleted, inserted or reordered record is found.
    Without --path the running daemon checks its own log (so it works over --endpoint, from another host);
    with --path, or when no daemon answers, the file is checked here (the log of --config)."""
    body = None if args.path or args.key_file else _audit_verify_by_daemon(args)
    if body is None:
        body = _audit_verify_here(args)
    output(args, body, _audit_text)
    return 0 if body["ok"] else 1


def _audit_verify_by_daemon(args: argparse.Namespace) -> dict[str, Any] | None:
    """The daemon's own check (``audit.verify``), or None when no daemon answers or it keeps no log."""
    try:
        connect.check_reachable(connect.resolve(args).endpoint)
    except (UsageError, Unreachable):
        return None
    try:
        return request(args, "audit.verify")
    except OpenFangError as exc:
        if exc.code == "unavailable":
            return None
        raise


def _audit_verify_here(args: argparse.Namespace) -> dict[str, Any]:
    from openfang.security.audit import chain_key, verify
    from openfang.security.report import UNKEYED_WARNING

    path, key_file = args.path, args.key_file
    if not path:
        sec = connect.places(args, "audit verify (or pass --path)").config.security
        path, key_file = sec.audit.path, key_file or sec.audit.key_file
    elif not key_file and (Path(path).parent / "audit.key").is_file():
        key_file = str(Path(path).parent / "audit.key")  # the key the daemon makes beside its log
    if not Path(path).exists():
        raise UsageError(f"audit verify: there is no audit log at {path}")
    result = verify(path, key=chain_key(key_file) if key_file else None)
    body: dict[str, Any] = {
        "ok": result.ok,
        "records": result.records,
        "first_bad_index": result.first_bad_index,
        "reason": result.reason,
        "path": str(path),
        "keyed": key_file is not None,
        "key_file": key_file,
    }
    if key_file is None:
        body["warning"] = UNKEYED_WARNING
    return body


def _audit_text(b: dict[str, Any]) -> str:
    text = f"{'ok' if b['ok'] else 'BROKEN'}: {b['records']} records in {b['path']}"
    text += f" (HMAC key {b['key_file']})" if b["keyed"] else " (unkeyed)"
    if not b["ok"]:
        text += f"; first bad record #{b['first_bad_index']}: {b['reason']}"
    return text + (f"\nWARNING: {b['warning']}" if b.get("warning") else "")


def cmd_memory(args: argparse.Namespace) -> int:
    """Memory verbs: search, history, stats (answered by the running system); store, import (through the
    memory writer); export, migrate (on the database file). Without --db / --writer the files are those
    of the daemon found as for every verb (--endpoint, --config, --data-dir, or the running one)."""
    op = args.memory_op
    if op == "search":
        body: dict[str, Any] = {"query": args.query, "mode": args.mode, "limit": args.limit}
        if args.agent:
            body["agent_id"] = args.agent
        if args.kind:
            body["kind"] = args.kind
        return output(args, request(args, "memory.search", body), render.memory_hits)
    if op == "history":
        body = {"agent_id": args.agent_id, "limit": args.limit}
        return output(args, request(args, "memory.history", body), render.memory_history)
    if op == "stats":
        return output(args, request(args, "memory.stats", {}), render.kv)
    from openfang.memory import cli as memory_cli

    if op == "export":
        db = args.db or connect.places(args, "memory export (or pass --db)").memory_db
        rows = memory_cli.export(db, sys.stdout, agent=args.agent)
        print(f"exported {rows} rows from {db}", file=sys.stderr)
        return 0
    if op == "usage":
        from openfang.memory.reader import MemoryReader

        db = args.db or connect.places(args, "memory usage (or pass --db)").memory_db
        with MemoryReader(db) as reader:
            usage = reader.usage(scope=None, agent_id=args.agent)
        return output(args, {"usage": usage}, render.memory_usage)
    if op == "migrate":
        db = args.db or connect.places(args, "memory migrate (or pass --db)").memory_db
        return output(args, {"db": db, "applied": memory_cli.migrate(db)}, render.kv)
    writer, db = args.writer, getattr(args, "db", None)
    if not writer:
        where = connect.places(args, f"memory {op} (or pass --writer)")
        writer, db = where.memory_writer, db or where.memory_db
    elif not db:
        db = memory_cli.db_beside(
            writer
        )  # the cluster layout: <data_dir>/run/memory.sock, <data_dir>/memory.db
    connect.check_reachable(writer)
    if op == "store":
        tags = [t for t in (args.tags or "").split(",") if t]
        ack = memory_cli.store(
            writer,
            args.agent_id,
            args.text,
            kind=args.kind,
            importance=args.importance,
            ttl_s=args.ttl,
            tags=tags,
        )
        return output(args, ack, render.kv)
    stream = open(args.file, encoding="utf-8") if args.file != "-" else sys.stdin  # noqa: SIM115
    with stream:
        counts = memory_cli.import_jsonl(writer, stream, db_path=db)
    return output(args, counts, render.kv)


def cmd_agent_check(args: argparse.Namespace) -> int:
    """Validate agent manifests offline: every problem of each file, with its file, table and key."""
    from openfang.workers.llm.providers import check_model_environment, validate_model_config
    from openfang.workers.manifest import load_manifest
    from openfang.workers.tools.registry import default_registry

    tools = set(default_registry().names())
    results: dict[str, dict[str, list[str]]] = {}
    for name in args.manifests:
        path = Path(name)
        problems: list[str] = []
        warnings: list[str] = []
        try:
            manifest = load_manifest(
                path.absolute(), source=str(path), tool_names=tools, validate_model=validate_model_config
            )
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
        else:
            if manifest.model is not None:
                found = check_model_environment(manifest.model.raw, f"{path}: [agent.model]")
                warnings = [str(p) for p in found]
        results[str(path)] = {"problems": problems, "warnings": warnings}

    def human(body: dict[str, dict[str, list[str]]]) -> str:
        lines = []
        for file, found in body.items():
            lines += found["problems"] + [f"{w} (warning: checked in this shell)" for w in found["warnings"]]
            if not found["problems"]:
                lines.append(f"{file}: ok")
        return "\n".join(lines)

    output(args, results, human)
    return EXIT_REMOTE if any(r["problems"] for r in results.values()) else 0


def cmd_agent(args: argparse.Namespace) -> int:
    """Agent verbs: spawn, list, send, info, suspend, resume, kill, hibernate, wake, move."""
    op = args.agent_op
    if op == "spawn":
        path = Path(args.manifest)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
        body: dict[str, Any] = {"manifest": text, "manifest_path": str(path.resolve())}
        if args.worker:
            body["worker"] = args.worker
        if args.session and args.send is None:
            raise UsageError("--session is the session of the first message: give --send TEXT too")
        if args.send is None:
            return output(args, request(args, "agent.spawn", body), render.kv)
        body["text"] = args.send
        if args.session:
            body["session"] = args.session
        return _spawned_with_message(args, request(args, "agent.spawn", body))
    if op == "list":
        return output(args, list_agents(args), render.agents)
    if op == "send":
        body = {"text": args.text}
        if args.session:
            body["session"] = args.session
        if args.service:
            body["service"] = args.id
        else:
            body["agent_id"] = args.id
        if args.stream:
            return _send_streaming(args, body)
        return output(args, request(args, "agent.send", body), lambda b: str(b.get("reply", "")))
    if op == "move":
        body = {"agent_id": args.id}
        if args.to:
            body["to"] = args.to
        return output(args, request(args, "agent.move", body), render.kv)
    return output(args, request(args, f"agent.{op}", {"agent_id": args.id}), render.kv)


def _spawned_with_message(args: argparse.Namespace, body: dict[str, Any]) -> int:
    """A spawn with --send: the agent's fields, then its reply; exit 1 (the agent is spawned all the same)
    when the first message failed, its error on stderr (in the body with --json)."""
    failed = body.get("send_error")
    if args.json:
        output(args, body, render.kv)
    else:
        shown = {k: v for k, v in body.items() if k not in ("reply", "usage", "send_error")}
        print(render.kv(shown))
        if failed is None:
            print(f"\n{body.get('reply', '')}")
    if failed is None:
        return 0
    if not args.json:
        code, message = failed.get("code", "internal"), failed.get("message", "")
        print(f"openfang: agent spawned, its first message failed: error {code}: {message}", file=sys.stderr)
    return EXIT_REMOTE


def _send_streaming(args: argparse.Namespace, body: dict[str, Any]) -> int:
    """Print a streamed reply as it comes: text pieces on stdout, tool progress on stderr (--json: lines)."""
    from openfang.protocol.messages import CHUNK_TYPE

    with connect.client(args) as client:
        for kind, part in client.stream("agent.send", body):
            if args.json:
                print(json.dumps({"type": kind, "body": part}, sort_keys=True, default=str), flush=True)
            elif kind != CHUNK_TYPE:
                print(flush=True)  # the pieces already showed the reply; end its line
            elif part.get("kind") == "text":
                print(part.get("text", ""), end="", flush=True)
            elif part.get("kind") == "tool":
                state = part.get("state")
                mark = "" if state == "start" else (" ok" if part.get("ok") else " failed")
                print(f"[tool {part.get('tool')} {state}{mark}]", file=sys.stderr, flush=True)
    return 0


def cmd_mcp_serve(args: argparse.Namespace) -> int:
    """Serve the cluster's agents as MCP tools on stdin/stdout (for MCP clients that launch a command)."""
    from openfang.control.config import missing_http_modules

    missing = missing_http_modules()
    if missing:
        raise ConfigError(f"'mcp serve' needs the 'http' extra (missing: {', '.join(missing)}): "
                          "pip install 'openfang[http]'")  # fmt: skip
    import asyncio

    from openfang.control.config import HttpConfig
    from openfang.control.http.bridge import GatewayBridge
    from openfang.control.http.mcp_server import serve_stdio
    from openfang.control.http.server import build_face

    endpoint, _ = resolve_endpoint(args)
    keys = getattr(args, "keys_dir", None) or os.environ.get("OPENFANG_KEYS_DIR")
    bridge = GatewayBridge(
        endpoint, timeout=args.timeout, keys_dir=keys, key_name=args.key_name, signer=connect.signer(args)
    )
    face = build_face(
        bridge, HttpConfig(), base_url="stdio:", data_dir=Path(os.environ.get("OPENFANG_DATA_DIR", "."))
    )
    asyncio.run(serve_stdio(face))
    return 0


# -- parser --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def connection_options(p: argparse.ArgumentParser, suppress: bool) -> None:
        # The same options are accepted before and after the verb; after the verb they must not reset
        # what was given before it, hence SUPPRESS defaults there.
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        p.add_argument("--config", default=d(None), help="the daemon's cluster.toml (to find its endpoints)")
        p.add_argument(
            "--data-dir",
            default=d(None),
            help="the daemon's data dir, as given to openfang-supervisor --data-dir (or $OPENFANG_DATA_DIR)",
        )
        p.add_argument(
            "--endpoint",
            default=d(None),
            help="control endpoint, e.g. ipc:///path/control.sock or tcp://host:port",
        )
        p.add_argument(
            "--events-endpoint", default=d(None), help="event endpoint (for 'events' with --endpoint)"
        )
        p.add_argument("--keys-dir", default=d(None), help="CURVE keys directory for tcp:// endpoints")
        p.add_argument("--key-name", default=d("client"), help="which client keypair in --keys-dir to use")
        p.add_argument("--timeout", type=float, default=d(10.0), help="seconds to wait for an answer")
        p.add_argument(
            "--sign-key",
            default=d(None),
            metavar="FILE",
            help="sign every request with this key file (HMAC secret: 32+ bytes or 64+ hex characters; "
            "ed25519: 32-byte seed or PEM); default $OPENFANG_SIGN_KEY",
        )
        p.add_argument(
            "--sign-key-id",
            default=d(None),
            metavar="ID",
            help="the key id the daemon knows the key by (default $OPENFANG_SIGN_KEY_ID, else the file "
            "name without its extension)",
        )
        p.add_argument(
            "--sign-alg",
            default=d(None),
            choices=["hmac-sha256", "ed25519"],
            help="the key's algorithm (default $OPENFANG_SIGN_ALG, else hmac-sha256)",
        )
        p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")

    common = argparse.ArgumentParser(add_help=False)
    connection_options(common, suppress=True)

    parser = argparse.ArgumentParser(
        prog="openfang",
        description="The OpenFANG control client: every verb talks to a running daemon over its control "
        "endpoint: from --endpoint; else --config (with --data-dir if the daemon was started with one; "
        "when the config's socket is absent, the running daemon started from the same config); else "
        "$OPENFANG_ENDPOINT; else --data-dir alone; else the only daemon running for this user (as "
        "'make run' starts it). Options go before or after the verb; every verb takes --json.",
        epilog="exit status: 0 success, 1 the daemon answered with an error (or a check failed), 2 usage or "
        "config error, 3 no daemon at the endpoint or no answer in time. Watching a running system: "
        "'openfang status' (ready once every worker is connected), 'openfang tree', 'openfang events', "
        "'openfang agent list', and the daemon's JSON log.",
    )
    parser.add_argument("--version", action="version", version=f"openfang {__version__}")
    connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, handler: Handler, **kw: Any) -> argparse.ArgumentParser:
        doc = " ".join((handler.__doc__ or "").split())
        p = sub.add_parser(name, parents=[common], help=doc, description=doc, **kw)
        p.set_defaults(handler=handler)
        return p

    verb("status", cmd_status)
    verb("tree", cmd_tree)
    verb("stop", cmd_stop)
    verb("reload", cmd_reload)
    p = verb("ping", cmd_ping)
    p.add_argument("--worker", help="ping this worker through the gateway")
    p = verb("events", cmd_events)
    p.add_argument("--kind", action="append", help="only these event kinds (repeatable; prefix match)")
    p.add_argument("--count", type=int, help="stop after this many events")

    keys = sub.add_parser("keys", help="CURVE key management")
    keys_sub = keys.add_subparsers(dest="keys_op", required=True)
    p = keys_sub.add_parser("generate", parents=[common], help=(cmd_keys_generate.__doc__ or "").strip())
    p.add_argument("--out", dest="keys_dir_out", default="keys", help="directory to write the keys into")
    p.add_argument("--name", default="client", help="name of the client keypair")
    p.set_defaults(handler=cmd_keys_generate)

    child = verb("child", cmd_child)
    child.add_argument("child_op", choices=["start", "terminate", "restart", "delete", "which", "count"])
    child.add_argument("--path", default="root", help="supervisor path, e.g. root/workers")
    child.add_argument("--id", help="child id (terminate/restart/delete)")
    child.add_argument("--spec", help="child spec as JSON (start)")

    security = sub.add_parser("security", help="the security engine")
    security_sub = security.add_subparsers(dest="security_op", required=True)
    p = security_sub.add_parser("report", parents=[common], help=(cmd_security_report.__doc__ or "").strip())
    p.set_defaults(handler=cmd_security_report)
    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_op", required=True)
    p = audit_sub.add_parser("verify", parents=[common], help=(cmd_audit_verify.__doc__ or "").strip())
    p.add_argument("--path", help="the audit database (default: the daemon's, or from --config)")
    p.add_argument(
        "--key-file",
        help="the HMAC chain key (default: the daemon's, else audit.key beside --path if there is one)",
    )
    p.set_defaults(handler=cmd_audit_verify)

    add_catalog_verbs(sub, common)
    add_schedule_verbs(sub, common)
    add_top_verb(sub, common, resolve=resolve_endpoint, signer=connect.signer)

    memory = sub.add_parser("memory", help="the agents' memory")
    memory_sub = memory.add_subparsers(dest="memory_op", required=True)
    p = memory_sub.add_parser(
        "search",
        parents=[common],
        help="hybrid (keyword + vector) search of memories: each hit with its fused score (it orders the "
        "hits), the cosine similarity of its vector match and its rank in each list",
    )
    p.add_argument("query")
    p.add_argument("--agent", help="only this agent's memories")
    p.add_argument("--kind", help="only memories of this kind")
    p.add_argument("--mode", choices=["hybrid", "keyword", "vector"], default="hybrid")
    p.add_argument("--limit", type=int, default=10)
    p = memory_sub.add_parser("history", parents=[common], help="an agent's conversation, newest first")
    p.add_argument("agent_id")
    p.add_argument("--limit", type=int, default=50)
    memory_sub.add_parser("stats", parents=[common], help="rows per memory kind, size, embedder")
    p = memory_sub.add_parser(
        "store", parents=[common], help="store a memory for an agent (embedded here, written by the writer)"
    )
    p.add_argument("agent_id")
    p.add_argument("text")
    p.add_argument("--kind", default="note", help="the memory's kind (default: note)")
    p.add_argument("--importance", type=float, default=0.5, help="0..1 (default: 0.5)")
    p.add_argument("--ttl", type=float, help="forget it after this many seconds")
    p.add_argument("--tags", help="comma-separated tags")
    p.add_argument("--writer", help="the memory writer endpoint (default: the daemon's)")
    p = memory_sub.add_parser("export", parents=[common], help="every row as JSON lines on stdout")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--db", help="the memory database (default: the daemon's)")
    p = memory_sub.add_parser(
        "import",
        parents=[common],
        help="JSON lines from 'export' through the writer; idempotent: rows already in the database "
        "(the same table, agent, text and time) are skipped, so importing twice stores each row once",
    )
    p.add_argument("file", help="the .jsonl file, or - for stdin")
    p.add_argument("--writer", help="the memory writer endpoint (default: the daemon's)")
    p.add_argument("--db", help="the database the writer writes (default: the daemon's; for the dedup)")
    p = memory_sub.add_parser(
        "usage",
        parents=[common],
        help="LLM calls, prompt/completion tokens and cost (where the model has a price) per agent and "
        "model, from procedural memory",
    )
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--db", help="the memory database (default: the daemon's)")
    p = memory_sub.add_parser("migrate", parents=[common], help="create or upgrade a memory database")
    p.add_argument("--db", help="the memory database (default: the daemon's)")
    memory.set_defaults(handler=cmd_memory)

    mcp = sub.add_parser("mcp", help="the Model Context Protocol face of the cluster")
    mcp_sub = mcp.add_subparsers(dest="mcp_op", required=True)
    p = mcp_sub.add_parser("serve", parents=[common], help=(cmd_mcp_serve.__doc__ or "").strip())
    p.set_defaults(handler=cmd_mcp_serve)

    agent = sub.add_parser("agent", help="spawn and talk to agents")
    agent_sub = agent.add_subparsers(dest="agent_op", required=True)
    p = agent_sub.add_parser(
        "spawn",
        parents=[common],
        help="spawn an agent from a manifest (with --send: and send it a first message, in one request)",
    )
    p.add_argument("manifest")
    p.add_argument("--worker", help="place it on this worker instead of the least loaded")
    p.add_argument(
        "--send",
        metavar="TEXT",
        help="send TEXT as the agent's first message, in the same request, and print its reply after the "
        "agent's fields (exit 1 if the message failed: the agent stays spawned)",
    )
    p.add_argument("--session", help="with --send: the session the first message belongs to")
    p = agent_sub.add_parser(
        "list",
        parents=[common],
        help="list registered agents with their state (running, suspended, restarting, hibernated, dead), "
        "one page in agent id order (1,000 by default; the footer names the next page's --after)",
    )
    p.add_argument("--limit", type=int, help="agents per page, 1..10000 (default 1000)")
    p.add_argument("--after", metavar="AGENT_ID", help="start after this agent id (a footer's next cursor)")
    p.add_argument("--state", choices=AGENT_STATES, help="only agents in this state")
    p.add_argument("--worker", help="only agents placed on this worker")
    p.add_argument(
        "--all", action="store_true", help=f"walk every page (of --limit, default {ALL_PAGE}), print them all"
    )
    p = agent_sub.add_parser(
        "send",
        parents=[common],
        help="send a message and print the reply (a failed model call is an llm_error naming provider, "
        "model, HTTP status or cause, and whether a fallback was tried)",
    )
    p.add_argument("id", help="agent id (or service name with --service)")
    p.add_argument("text")
    p.add_argument("--service", action="store_true", help="ID is a service name: load-balanced")
    p.add_argument("--session", help="the conversation session the message belongs to (memory keeps it)")
    p.add_argument(
        "--stream", action="store_true", help="print the reply as it is produced (tool progress on stderr)"
    )
    p = agent_sub.add_parser("check", parents=[common], help=(cmd_agent_check.__doc__ or "").strip())
    p.add_argument("manifests", nargs="+", metavar="FILE", help="agent.toml files")
    p.set_defaults(handler=cmd_agent_check)
    for op in ("info", "suspend", "resume", "kill"):
        p = agent_sub.add_parser(op, parents=[common], help=f"{op} an agent")
        p.add_argument("id")
    p = agent_sub.add_parser(
        "hibernate",
        parents=[common],
        help="write an idle agent's guest state to <data_dir>/snapshots and free its sandbox (refused while "
        "it handles a message or is suspended); its next message wakes it",
    )
    p.add_argument("id")
    p = agent_sub.add_parser(
        "wake", parents=[common], help="bring a hibernated agent back from its snapshot now"
    )
    p.add_argument("id")
    p = agent_sub.add_parser(
        "move",
        parents=[common],
        help="move an agent to another worker, same id: its guest state goes by snapshot (path snapshot); "
        "a module a snapshot cannot hold starts fresh there (path fresh). Messages sent meanwhile wait for "
        "it; a suspended agent stays suspended",
    )
    p.add_argument("id")
    p.add_argument("--to", metavar="WORKER", help="the worker id (default: the least loaded other worker)")
    agent.set_defaults(handler=cmd_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler: Handler = args.handler
        return handler(args)
    except (ConfigError, UsageError) as exc:
        print(f"openfang: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"openfang: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Timeout as exc:
        print(f"openfang: {exc} (is the daemon running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OpenFangError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.to_wire()}, indent=2, sort_keys=True, default=str))
        else:
            print(f"openfang: error {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REMOTE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
