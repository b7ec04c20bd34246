"""The gateway's handlers take typed bodies: its dispatch tables name the catalogue's body class per type."""

from __future__ import annotations

import ast
from pathlib import Path

from openfang.protocol import messages

GATEWAY = Path(__file__).resolve().parents[2] / "control" / "gateway.py"


def _table(name: str) -> dict[str, str]:
    """``{type: body class name}`` of the ``self.<name> = {"type": (BodyClass, handler), ...}`` table."""
    for node in ast.walk(ast.parse(GATEWAY.read_text(encoding="utf-8"))):
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "attr", None) == name for t in targets) and isinstance(node.value, ast.Dict):
                table: dict[str, str] = {}
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    assert isinstance(key, ast.Constant) and isinstance(value, ast.Tuple), ast.dump(value)
                    body_class = value.elts[0]
                    assert isinstance(body_class, ast.Name)
                    table[str(key.value)] = body_class.id
                return table
    raise AssertionError(f"control/gateway.py has no {name} table")


def test_gateway_client_dispatch_covers_the_catalogue_with_its_request_bodies() -> None:
    """Every catalogued request type has a gateway handler, typed by the catalogue's request body class."""
    table = _table("_client_dispatch")
    assert set(table) == set(messages.CATALOGUE)
    wrong = {t: c for t, c in table.items() if c != messages.CATALOGUE[t].request.__name__}
    assert not wrong, f"handlers typed with another body than the catalogue's: {wrong}"


def test_gateway_worker_dispatch_is_typed_by_the_internal_catalogue() -> None:
    """The worker messages the gateway handles are the internal ones a worker sends, plus event."""
    table = _table("_worker_dispatch")
    from_workers = {t for t, spec in messages.INTERNAL.items() if spec.sender == "worker"}
    assert set(table) == from_workers | {messages.EVENT_TYPE}
    for type_ in from_workers:
        assert table[type_] == messages.INTERNAL[type_].body.__name__
    assert table[messages.EVENT_TYPE] == "Event"


def test_gateway_forward_dispatch_covers_every_forwarded_type_with_its_body() -> None:
    """Each type a worker may forward for an agent has a handler typed by the catalogue's body class."""
    from openfang.protocol.bodies import FORWARDED_TYPES

    table = _table("_forward_dispatch")
    assert set(table) == set(FORWARDED_TYPES)
    for type_, body_class in table.items():
        spec = messages.CATALOGUE.get(type_)
        expected = spec.request if spec is not None else messages.INTERNAL[type_].body
        assert body_class == expected.__name__, type_
