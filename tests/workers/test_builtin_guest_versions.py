"""Layer 16 (rollback protection) across OpenFANG releases that change a built-in guest's text."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfang.protocol.envelope import Envelope
from openfang.security.audit import AuditLog
from openfang.security.config import security_from_args
from openfang.security.rollback import VersionStore
from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.host.security import HostAudit, HostSecurity
from openfang.workers.sandbox.builtin_guests import _PREVIOUS_TEXTS, BUILTINS, builtin_digest
from openfang.workers.tools.registry import default_registry

# The digest of each built-in's text today. A change of a built-in's text fails the first test below until its
# previous digest is added to builtin_guests._PREVIOUS_TEXTS (else every agent of it recorded in a data dir
# is refused at the upgrade) and the new digest is written here.
KNOWN = {
    "llm-agent": "6e0c0f6c2edfaddc3357d55bc6a29707976c5fe6b52f8a813064c6bd4bbbe8f5",
    "echo": "2bce2993822b4fb403ec9b505e9504118903dc391b37af9cd68975a2ebb01a1a",
}

AGENT = '[agent]\nname = "clock"\nversion = {version}\nmodule = "builtin:{module}"\n'
MODEL = '[agent.model]\nprovider = "scripted"\ndefault = "ok"\n'


def _manifest(module: str, version: int = 1, name: str = "clock") -> str:
    text = AGENT.format(version=version, module=module).replace('"clock"', f'"{name}"')
    return text + MODEL if module == "llm-agent" else text


def test_builtin_guest_texts_are_the_known_ones() -> None:
    """Each built-in's digest is the one recorded here: a changed text must list its previous digest first."""
    assert set(KNOWN) == set(BUILTINS)
    for name, digest in KNOWN.items():
        assert builtin_digest(name) == digest, (
            f"builtin:{name} changed: add {digest} to _PREVIOUS_TEXTS in workers/sandbox/builtin_guests.py "
            f"(and to _EARLIER if its snapshots fit the new text), then record the new digest in KNOWN"
        )
        assert digest not in _PREVIOUS_TEXTS.get(name, ())


def _host(tmp_path: Path) -> AgentHost:
    cfg = security_from_args(None, data_dir=str(tmp_path))
    sec = HostSecurity(cfg, HostAudit(AuditLog(tmp_path / "audit.db")), data_dir=tmp_path)
    return AgentHost("w-versions", HostParts(tools=default_registry(), security=sec))


def _spawn(host: AgentHost, manifest: str) -> Envelope:
    req = Envelope(type="agent.spawn", body={"manifest": manifest})
    host.submit(req)
    for _ in range(500):
        for reply in host.step(0.01):
            if reply.id == req.id:
                return reply
    raise AssertionError("no reply to agent.spawn")


@pytest.mark.parametrize("module", ["llm-agent", "echo"])
def test_a_version_recorded_with_an_earlier_builtin_text_spawns_after_an_upgrade(
    tmp_path: Path, module: str
) -> None:
    """An agent version accepted with an earlier release's text of its built-in spawns again (the manifest is
    unchanged: only the runtime's built-in bytes are), without a refusal or a rollback record in the audit."""
    earlier = _PREVIOUS_TEXTS[module][0]
    with VersionStore(tmp_path / "versions.db") as store:
        store.accept("clock", 1, earlier)
    host = _host(tmp_path)
    try:
        for _ in range(2):
            reply = _spawn(host, _manifest(module))
            assert not reply.is_error, reply.body
    finally:
        host.close()
    kinds = [r.kind for r in AuditLog(tmp_path / "audit.db").records()]
    assert not [k for k in kinds if k.startswith("rollback.")]


def test_other_bytes_under_an_accepted_builtin_version_and_older_versions_are_still_refused(
    tmp_path: Path,
) -> None:
    """The upgrade rule covers only earlier texts of the same built-in: a recorded digest that is none of them
    (another module, another built-in's text) is still "accepted before with different bytes", and a lower
    version is still a rollback."""
    with VersionStore(tmp_path / "versions.db") as store:
        store.accept("clock", 1, "ab" * 32)
        store.accept("other", 1, _PREVIOUS_TEXTS["echo"][0])  # echo's earlier text, spawned as llm-agent
        store.accept("newer", 2, builtin_digest("llm-agent"))
    host = _host(tmp_path)
    try:
        reused = _spawn(host, _manifest("llm-agent"))
        other = _spawn(host, _manifest("llm-agent", name="other"))
        older = _spawn(host, _manifest("llm-agent", name="newer"))
    finally:
        host.close()
    for reply in (reused, other):
        assert reply.is_error and reply.body["reason"] == "version_reuse", reply.body
    assert older.is_error and older.body["reason"] == "rollback", older.body
