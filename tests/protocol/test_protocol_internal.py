"""Every message that crosses a socket is in a catalogue: the gateway<->worker types in ``messages``, the
supervisor uplink kinds in ``supervisor.child.UPLINK``. The source is walked with :mod:`ast`."""

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
UPLINK_USERS = ("supervisor", "control", "workers", "memory")


def _known_types() -> set[str]:
    known = set(messages.CATALOGUE) | {f"{t}.ok" for t in messages.CATALOGUE} | set(messages.INTERNAL)
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


def types_used(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(message types, type prefixes) a module sends or dispatches on.

    Sent: ``Envelope(type="x")``. Dispatched: ``<x>.type == "x"`` / ``in (...)``, keys of a ``{type: ...}``
    handler table (a dict assigned to a name ending in ``_HANDLERS`` or ``_dispatch``), and
    ``<x>.type.startswith("prefix.")``.
    """
    types: set[str] = set()
    prefixes: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Envelope":
            for kw in node.keywords:
                if kw.arg == "type":
                    types.update(_strings(kw.value))
        elif isinstance(node, ast.Compare) and _is_type_attr(node.left):
            for comparator in node.comparators:
                types.update(_strings(comparator))
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
            if any(n.endswith(("_HANDLERS", "_dispatch")) for n in names) and node.value:
                if isinstance(node.value, ast.Dict):
                    types.update(s for k in node.value.keys if k is not None for s in _strings(k))
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
    )
    assert types_used(tree) == ({"a.sent", "a.compared", "a.tupled", "a.handled"}, {"p."})


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
