"""The agent host as an agent supervisor: typed dispatch, the tree's restart rules, state reported up."""

from __future__ import annotations

from pathlib import Path

from sandbox_helpers import make_host, manifest

TRAP = """(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32) (param i32) (result i64) (unreachable))
)"""


def _states(events: list[dict[str, object]], agent_id: str) -> list[tuple[object, object]]:
    return [(e["state"], e.get("why")) for e in events if e.get("agent_id") == agent_id]


def test_host_dispatcher_refuses_a_body_that_breaks_its_schema() -> None:
    """Bodies are typed by the protocol catalogue: a wrong field type is bad_request naming the field."""
    d = make_host()
    try:
        reply = d.call("agent.send", agent_id="x", text=5)
        assert reply.body["code"] == "bad_request" and "text" in reply.body["message"]
        unknown = d.call("agent.dance", agent_id="x")
        assert unknown.body["code"] == "bad_request" and "agent.dance" in unknown.body["message"]
    finally:
        d.host.close()


def test_host_uses_the_id_the_gateway_assigned() -> None:
    """A spawn carrying agent_id (set by the gateway from its registry) gets exactly that id, no location."""
    d = make_host()
    try:
        body = d.ok(
            "agent.spawn", manifest=manifest("helper", module="builtin:echo", model=False), agent_id="h-7"
        )
        assert body["agent_id"] == "h-7"
        assert (
            d.ok("agent.spawn", manifest=manifest("helper", module="builtin:echo", model=False))["agent_id"]
            == "helper-1"
        )  # a host on its own: <name>-<n>, no @worker
    finally:
        d.host.close()


def test_host_gives_up_a_crashing_agent_past_its_intensity_and_says_why(tmp_path: Path) -> None:
    """permanent, restart_intensity = 1: one restart, then dead with why = restart_intensity."""
    (tmp_path / "trap.wat").write_text(TRAP)
    d = make_host()
    try:
        text = manifest(
            "trappy", module=str(tmp_path / "trap.wat"), model=False, agent="restart_intensity = 1"
        )
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        assert d.call("agent.send", agent_id=aid, text="a").body["code"] == "sandbox_error"
        assert d.ok("agent.info", agent_id=aid)["restarts"] == 1
        assert d.call("agent.send", agent_id=aid, text="b").body["code"] == "sandbox_error"
        assert d.call("agent.info", agent_id=aid).body["code"] == "not_found"
        states = _states(d.events, aid)  # type: ignore[attr-defined]
        assert states == [
            ("running", None),
            ("restarting", None),
            ("running", None),
            ("dead", "restart_intensity"),
        ]
    finally:
        d.host.close()


def test_host_temporary_agent_is_not_restarted_after_a_crash(tmp_path: Path) -> None:
    """temporary: the first crash removes it, reported dead with why = crashed (not given up)."""
    (tmp_path / "trap.wat").write_text(TRAP)
    d = make_host()
    try:
        text = manifest("once", module=str(tmp_path / "trap.wat"), model=False, agent='restart = "temporary"')
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        assert d.call("agent.send", agent_id=aid, text="a").body["code"] == "sandbox_error"
        assert _states(d.events, aid)[-1] == ("dead", "crashed")  # type: ignore[attr-defined]
        assert not [a for a in d.audit if a.get("kind") == "agent_gave_up"]
    finally:
        d.host.close()


def test_host_suspended_agent_shows_suspended_activity() -> None:
    """A suspended agent's activity is suspended (not throttled); its message waits for the resume."""
    d = make_host()
    try:
        aid = d.ok("agent.spawn", manifest=manifest("napper", module="builtin:echo", model=False))["agent_id"]
        d.ok("agent.suspend", agent_id=aid)
        pending = d.submit("agent.send", agent_id=aid, text="later")
        d.pump()
        info = d.ok("agent.info", agent_id=aid)
        assert (info["state"], info["activity"]) == ("suspended", "suspended")
        assert pending.id not in d.replies
        d.ok("agent.resume", agent_id=aid)
        assert "later" in d.wait(pending).body["reply"]  # echo returns the message it was handed
    finally:
        d.host.close()
