"""Every message that crosses a socket is in a catalogue: client requests and the internal types (gateway <->
worker, agents' forwarded requests, the memory writer's) in ``messages``, the supervisor uplink kinds in
``supervisor.child.UPLINK``. The source is walked with :mod:`ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from openfang.protocol import messages
from openfang.protocol.bodies import ForwardedRequest, WorkerForward, WorkerHello
from openfang.protocol.envelope import ERROR_TYPE, Envelope, decode, encode
from openfang.protocol.errors import ProtocolError
from openfang.supervisor.child import UPLINK, pack, unpack

ROOT = Path(__file__).resolve().parents[2]
# The modules that speak on the gateway's worker endpoint.
SPEAKERS = ("control/gateway.py", "workers/worker.py")
# Every package whose modules send or handle messages on a socket (the CLI and the HTTP face are clients).
SENDERS = ("control", "workers", "memory", "openfang/cli", "security")
UPLINK_USERS = ("supervisor", "control", "workers", "memory")
# Modules that read a request body's reserved signature keys (not fields of any body class): see below.
RESERVED_KEY_READERS = ("security/identity.py", "security/signing.py")


def _known_types() -> set[str]:
    known = set(messages.CATALOGUE) | {f"{t}.ok" for t in messages.CATALOGUE} | set(messages.INTERNAL)
    known |= {f"{t}.ok" for t, spec in messages.INTERNAL.items() if spec.reply is not None}
    return known | {messages.EVENT_TYPE, messages.CHUNK_TYPE, ERROR_TYPE}


def _strings(node: ast.expr) -> list[str]:
    """The string constants of ``node``: a constant, or the elements of a tuple, list, set or frozenset()."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for elt in node.elts for s in _strings(elt)]
    if isinstance(node, ast.Call) and node.args and getattr(node.func, "id", None) in ("frozenset", "set"):
        return _strings(node.args[0])
    return []


def _is_type_attr(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "type"


def _constants(trees: list[ast.Module]) -> dict[str, set[str]]:
    """Module-level ``NAME = "string"`` constants of ``trees``, by name (``EPISODE = "memory.episode"``)."""
    out: dict[str, set[str]] = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        out.setdefault(target.id, set()).add(node.value.value)
    return out


def types_used(tree: ast.Module, constants: dict[str, set[str]] | None = None) -> tuple[set[str], set[str]]:
    """(message types, type prefixes) a module sends or dispatches on.

    Sent: ``Envelope(type="x")``, ``messages.request(body, type="x")``, the first argument of a client's
    ``.call("x", ...)`` / ``.submit("x", ...)``. Dispatched: ``<x>.type == "x"`` / ``in (...)``, keys of a
    ``{type: ...}`` handler table (a dict assigned to a name ending in ``_HANDLERS``, ``_handlers`` or
    ``_dispatch``), and ``<x>.type.startswith("prefix.")``. A name or attribute in one of those places is
    resolved through ``constants`` (``messages.EPISODE``); an f-string gives its literal start as a prefix.
    """
    constants = constants or {}
    types: set[str] = set()
    prefixes: set[str] = set()

    def add(node: ast.expr) -> None:
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                prefixes.add(head.value)
            return
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
        if isinstance(node, ast.Name | ast.Attribute) and name in constants:
            types.update(constants[name])
            return
        types.update(_strings(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            func_name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if func_name in ("Envelope", "request"):
                for kw in node.keywords:
                    if kw.arg == "type":
                        add(kw.value)
            elif func_name in ("call", "submit", "ok") and isinstance(func, ast.Attribute) and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant | ast.Name | ast.Attribute | ast.JoinedStr):
                    add(first)
        if isinstance(node, ast.Compare) and _is_type_attr(node.left):
            for comparator in node.comparators:
                add(comparator)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "startswith"
            and _is_type_attr(node.func.value)
        ):
            prefixes.update(s for arg in node.args for s in _strings(arg))
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets}
            if any(n.endswith(("_HANDLERS", "_handlers", "_dispatch")) for n in names) and node.value:
                if isinstance(node.value, ast.Dict):
                    for key in node.value.keys:
                        if key is not None:
                            add(key)
                else:
                    types.update(_strings(node.value))
    return types, prefixes


def test_types_used_sees_sends_dispatch_tables_and_prefixes() -> None:
    """The walker finds a sent type, a compared type, a handler table's keys and a prefix."""
    tree = ast.parse(
        "Envelope(type='a.sent')\n"
        "if env.type == 'a.compared' or env.type in ('a.tupled',): pass\n"
        "_HANDLERS = {'a.handled': f}\n"
        "env.type.startswith('p.')\n"
        "messages.request(body, type='a.requested')\n"
        "client.call(NAMED, {})\n"
        "self._handlers = {messages.NAMED: f}\n"
        "Envelope(type=f'pre.{op}')\n"
    )
    constants = {"NAMED": {"a.named"}}
    assert types_used(tree, constants) == (
        {"a.sent", "a.compared", "a.tupled", "a.handled", "a.requested", "a.named"},
        {"p.", "pre."},
    )


_WASM_SYMBOLS = {"workers/sandbox/guest_abi.py"}


def _modules() -> dict[str, ast.Module]:
    trees: dict[str, ast.Module] = {}
    for package in SENDERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            trees[path.relative_to(ROOT).as_posix()] = ast.parse(path.read_text(encoding="utf-8"))
    return trees


def test_every_message_type_any_module_sends_or_handles_is_catalogued() -> None:
    """Across control, workers, memory, the CLI and security, each type sent on a socket or dispatched on is
    a catalogued request, internal message, reply, event, chunk or error (prefixes match some type)."""
    trees = _modules()
    # The guest ABI's constants name wasm exports and imports (``inst.call(abi.EXPORT_HANDLE, ...)`` calls a
    # guest function), never a message type.
    constants = _constants([tree for rel, tree in trees.items() if rel not in _WASM_SYMBOLS])
    used: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for rel, tree in trees.items():
        types, starts = types_used(tree, constants)
        for type_ in types:
            used.setdefault(type_, rel)
        for prefix in starts:
            prefixes.setdefault(prefix, rel)
    # The walk sees each family: client requests, worker messages, forwarded requests, the memory writer's.
    assert {"agent.send", "worker.forward", "schedule.add", "topic.subscribers", "memory.episode"} <= set(
        used
    )
    assert {"memory.store", "memory.forget", "memory.reclaim", "memory.ping", "status"} <= set(used)
    unknown = {t: where for t, where in used.items() if t not in _known_types()}
    assert not unknown, f"message types in no catalogue: {unknown}"
    loose = {p: where for p, where in prefixes.items() if not any(t.startswith(p) for t in _known_types())}
    assert not loose, f"type prefixes matching no catalogued type: {loose}"


@pytest.mark.parametrize("module", SPEAKERS)
def test_every_type_the_gateway_and_worker_use_is_catalogued(module: str) -> None:
    """Each type the gateway or a worker sends or dispatches on is a catalogued, internal or reply type."""
    types, prefixes = types_used(ast.parse((ROOT / module).read_text(encoding="utf-8")))
    assert {"worker.hello", "worker.forward", "worker.resync"} & types  # the walk sees the internal ones
    assert not types - _known_types(), f"{module} uses types in no catalogue: {types - _known_types()}"
    for prefix in prefixes:
        assert any(t.startswith(prefix) for t in messages.CATALOGUE), f"{module}: prefix {prefix!r}"


def test_internal_types_are_refused_at_the_client_door() -> None:
    """worker.hello, worker.resync and worker.forward are not request types: a client cannot send them."""
    assert not messages.INTERNAL_TYPES & messages.REQUEST_TYPES
    assert {"worker.hello", "worker.resync", "worker.forward"} <= messages.INTERNAL_TYPES


def test_internal_bodies_parse_typed_and_name_each_problem() -> None:
    """parse gives a WorkerHello / WorkerForward, and a bad body raises naming each bad field."""
    hello = messages.parse(Envelope(type="worker.hello", body={"worker": "w-0", "pid": 7}), WorkerHello)
    assert (hello.worker, hello.pid, hello.cpu, hello.agent_ids) == ("w-0", 7, None, None)
    body = {"sender": "a-1", "request": {"type": "agent.send", "body": {"agent_id": "a-2", "text": "hi"}}}
    forward = messages.parse(Envelope(type="worker.forward", body=body), WorkerForward)
    assert forward.request == ForwardedRequest(type="agent.send", body={"agent_id": "a-2", "text": "hi"})
    with pytest.raises(ProtocolError) as bad:
        messages.parse(Envelope(type="worker.hello", body={"pid": "x", "extra": 1}), WorkerHello)
    assert "worker" in bad.value.message and "pid" in bad.value.message and "extra" in bad.value.message
    with pytest.raises(ProtocolError, match=r"only agent\.send, agent\.spawn, schedule\.add"):
        bad_kind = {"sender": "a-1", "request": {"type": "agent.kill", "body": {}}}
        messages.parse(Envelope(type="worker.forward", body=bad_kind), WorkerForward)


def test_internal_bodies_are_left_to_their_handler_by_decode() -> None:
    """decode does not drop a bad worker.forward, so the gateway can answer it with the problem."""
    env = decode(encode(Envelope(type="worker.forward", body={"sender": 3})))
    assert env.type == "worker.forward"


def _is_t(node: ast.expr) -> bool:
    """``msg["t"]`` or ``msg.get("t")``."""
    if isinstance(node, ast.Subscript):
        return _strings(node.slice) == ["t"]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and _strings(node.args[0]) == ["t"]
    return False


def _uplink_kinds(tree: ast.Module) -> set[str]:
    """Kinds in ``{"t": "x", ...}`` literals and in comparisons with ``msg["t"]``, ``msg.get("t")``, or a
    local name assigned from one of those in the same function."""
    kinds: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "t":
                    kinds.update(_strings(value))
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in scopes:
        t_names = {
            target.id
            for n in ast.walk(scope)
            if isinstance(n, ast.Assign) and _is_t(n.value)
            for target in n.targets
            if isinstance(target, ast.Name)
        }
        for n in ast.walk(scope):
            if isinstance(n, ast.Compare) and (
                _is_t(n.left) or (isinstance(n.left, ast.Name) and n.left.id in t_names)
            ):
                for comparator in n.comparators:
                    kinds.update(_strings(comparator))
    return kinds


def test_uplink_kinds_sees_literals_comparisons_and_local_names() -> None:
    """The walker finds a sent kind, a compared kind, and one compared through a local name only."""
    tree = ast.parse(
        "def f(msg, send):\n"
        "    send({'t': 'k.sent'})\n"
        "    if msg['t'] in ('k.sub',) or msg.get('t') == 'k.get': pass\n"
        "    kind = msg['t']\n"
        "    if kind == 'k.local': pass\n"
        "def g(kind):\n"
        "    if kind == 'not.a.kind': pass\n"
    )
    assert _uplink_kinds(tree) == {"k.sent", "k.sub", "k.get", "k.local"}


def test_every_uplink_kind_used_is_in_the_uplink_table() -> None:
    """Each "t" a supervisor, the daemon, the gateway, a worker or the memory writer sends or reads is in
    supervisor.child.UPLINK."""
    used: dict[str, str] = {}
    for package in UPLINK_USERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for kind in _uplink_kinds(ast.parse(path.read_text(encoding="utf-8"))):
                used.setdefault(kind, path.relative_to(ROOT).as_posix())
    assert {"ready", "hb", "req", "rep", "event", "subtree"} <= set(used)  # the walk works
    unknown = {kind: where for kind, where in used.items() if kind not in UPLINK}
    assert not unknown, f"uplink kinds in no table: {unknown}"


def test_uplink_unpack_refuses_a_kind_not_in_the_table() -> None:
    """An uplink packet with an unknown "t" is a ProtocolError naming it; a known one passes."""
    assert unpack(pack({"t": "hb"})) == {"t": "hb"}
    with pytest.raises(ProtocolError, match="'bogus'"):
        unpack(pack({"t": "bogus"}))


def _raw_body_reads(tree: ast.Module) -> list[int]:
    """Lines reading ``env.body`` / ``request.body`` field by field (``.get(...)`` or ``[...]``)."""
    lines = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Subscript):
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "body"
            and isinstance(target.value, ast.Name)
            and target.value.id in ("env", "request")
        ):
            lines.append(node.lineno)
    return lines


def test_raw_body_reads_walker_sees_get_and_subscript() -> None:
    """The walker finds env.body.get(...) and request.body[...], not reply.body.get(...)."""
    tree = ast.parse("env.body.get('a')\nrequest.body['b']\nreply.body.get('c')\n")
    assert _raw_body_reads(tree) == [1, 2]


def test_no_handler_reads_a_request_body_field_by_field() -> None:
    """Handlers take typed bodies from the catalogue: no module of control, workers, memory or the CLI reads
    a request (``env`` / ``request``) body key by key. Replies and events stay open maps, relayed; the
    security layers read only the reserved signature keys (``_auth``, the agent signature), before the
    body is typed and with those keys stripped."""
    found = {
        f"{rel}:{line}"
        for rel, tree in _modules().items()
        if not rel.startswith(RESERVED_KEY_READERS)
        for line in _raw_body_reads(tree)
    }
    assert not found, f"request bodies read raw (parse them with messages.parse): {sorted(found)}"
