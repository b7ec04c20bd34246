"""Security at the control boundary of a real daemon: each attack refused, service continues, audited."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from daemon_harness import Cluster, wait_for

from openfang.protocol.envelope import Envelope, decode, encode
from openfang.security.audit import key_beside, verify
from openfang.security.signing import SigningKey, sign

pytestmark = pytest.mark.integration


def _audit_kinds(c: Cluster) -> list[str]:
    with sqlite3.connect(c.data_dir / "audit.db") as db:
        return [row[0] for row in db.execute("SELECT kind FROM audit_log ORDER BY seq")]


def test_client_flood_is_rate_limited_audited_and_served_again_later(make_cluster: type[Cluster]) -> None:
    """Layer 3: past its burst a client gets rate_limited with a retry hint; later it is served again."""
    c = make_cluster(workers=1)
    c.write_config("\n[security.ratelimit.client_requests]\nrate = 2\nburst = 3\n")
    c.start()
    ids = []
    for _ in range(10):
        env = Envelope(type="ping")
        ids.append(env.id)
        c.send_raw(encode(env))
    replies = [c.recv_env() for _ in ids]
    limited = [r for r in replies if r.is_error and r.body["code"] == "rate_limited"]
    # Burst 3, refill 2/s: at most 3 pass at once, a few more if the machine is slow to send all ten.
    assert 3 <= len(limited) <= 7, [r.body for r in replies]
    assert "retry_after" in limited[0].body or "retry" in limited[0].body["message"]
    time.sleep(1.2)
    assert not c.call("ping").is_error
    assert any(k.startswith("ratelimit") for k in _audit_kinds(c)), _audit_kinds(c)
    assert verify(c.data_dir / "audit.db", key=key_beside(c.data_dir / "audit.db")).ok
    assert c.stop() == 0


def test_signing_required_refuses_unsigned_forged_and_replayed_requests(make_cluster: type[Cluster]) -> None:
    """Layer 4: with require = true only fresh requests signed by a configured key get through."""
    c = make_cluster(workers=1)
    secret = os.urandom(32)
    key_file = c.dir / "ops.key"
    key_file.write_text(secret.hex())
    c.write_config(
        "\n[security.signing]\nrequire = true\n"
        f'keys = [{{id = "ops", alg = "hmac-sha256", file = "{key_file}"}}]\n'
    )
    c.start()
    good = SigningKey.hmac("ops", secret)
    unsigned = c.call("status")
    assert unsigned.is_error and unsigned.body["code"] == "denied"
    signed = sign(Envelope(type="status"), good)
    c.send_raw(encode(signed))
    assert not c.recv_env().is_error
    c.send_raw(encode(signed))  # the very same frame again
    replay = c.recv_env()
    assert replay.is_error and replay.body["code"] == "denied" and "replay" in replay.body["message"].lower()
    forged = sign(Envelope(type="status"), SigningKey.hmac("ops", os.urandom(32)))
    c.send_raw(encode(forged))
    assert c.recv_env().body["code"] == "denied"
    kinds = _audit_kinds(c)
    assert sum(k.startswith("signing.") for k in kinds) >= 3, kinds
    assert c.stop() == 0


def _shallow_cluster(make_cluster: type[Cluster]) -> Cluster:
    """A started cluster whose validation refuses bodies nested deeper than 4 levels."""
    c = make_cluster(workers=1)
    c.write_config("\n[security.validation]\nmax_depth = 4\n")
    return c.start()


def _nested(depth: int) -> dict[str, object]:
    nested: dict[str, object] = {"x": 1}
    for _ in range(depth):
        nested = {"n": nested}
    return nested


def test_deeply_nested_request_is_refused_by_validation_and_audited(make_cluster: type[Cluster]) -> None:
    """Layer 1: a body nested past max_depth is refused naming the limit; the gateway keeps serving."""
    c = _shallow_cluster(make_cluster)
    nested = _nested(10)
    reply = c.call("child.start", {"path": "root", "spec": nested})
    assert reply.is_error and reply.body["code"] in ("bad_request", "denied"), reply.body
    assert "levels deep" in reply.body["message"]
    assert not c.call("ping").is_error
    assert "validation.rejected" in _audit_kinds(c)
    assert c.stop() == 0


def test_audit_verify_detects_a_deleted_record(make_cluster: type[Cluster]) -> None:
    """Layer 12: openfang audit verify passes on the real (keyed) log and fails once a record is removed."""
    c = make_cluster(workers=1)
    c.write_config("\n[security.ratelimit.client_requests]\nrate = 1\nburst = 1\n")
    c.start()
    for _ in range(4):
        c.call("ping")
    c.stop()
    db_path = c.data_dir / "audit.db"
    ctl = [sys.executable, "-m", "openfang.cli.main", "audit", "verify", "--path", str(db_path), "--json"]
    ok = subprocess.run(ctl, capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] >= 2, ok.stdout + ok.stderr
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
        db.execute("DELETE FROM audit_log WHERE seq = (SELECT MIN(seq) FROM audit_log)")
    broken = subprocess.run(ctl, capture_output=True, text=True)
    assert broken.returncode == 1 and json.loads(broken.stdout)["ok"] is False


def test_audit_verify_request_checks_the_running_daemons_log_and_finds_a_deleted_record(
    make_cluster: type[Cluster],
) -> None:
    """audit.verify: the gateway checks its own keyed log off its loop (three requests at once share one
    check), and after a record is edited under it the answer names the first bad record; the CLI over
    --endpoint asks the daemon, exit 1 when broken."""
    c = _shallow_cluster(make_cluster)
    nested = _nested(10)
    for _ in range(3):  # refused by validation, and each refusal is audited
        assert c.call("child.start", {"path": "root", "spec": nested}).is_error
    requests = [Envelope(type="audit.verify", body={}) for _ in range(3)]
    for req in requests:
        c.send_raw(encode(req))
    replies = {}
    while len(replies) < 3:
        reply = c.recv_env(15.0)
        replies[reply.id] = reply.body
        assert reply.type == "audit.verify.ok", reply.body
    assert set(replies) == {r.id for r in requests}
    first = replies[requests[0].id]
    assert first["ok"] is True and first["records"] >= 1 and first["keyed"] is True, first
    assert first["path"] == str(c.data_dir / "audit.db") and "warning" not in first
    with sqlite3.connect(c.data_dir / "audit.db") as db:
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        db.execute("UPDATE audit_log SET record = replace(record, 'validation', 'VALIDATION') WHERE seq = 1")
    broken = c.ok("audit.verify")
    assert broken["ok"] is False and broken["first_bad_index"] == 0 and broken["reason"], broken
    ctl = [sys.executable, "-m", "openfang.cli.main", "audit", "verify", "--endpoint", c.endpoint, "--json"]
    out = subprocess.run(ctl, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and json.loads(out.stdout)["first_bad_index"] == 0, out.stdout + out.stderr
    assert c.ok("ping")["pid"] > 0  # the gateway kept serving
    assert any(e.get("event") == "audit_chain_broken" for e in c.log_events())
    assert c.stop() == 0


def test_security_report_lists_sixteen_layers_of_the_running_system(make_cluster: type[Cluster]) -> None:
    """openfang security report answers from the running gateway with every layer and no key material."""
    c = make_cluster(workers=1).start()
    out = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "security", "report", "--endpoint", c.endpoint, "--json"],
        capture_output=True,
        text=True,
    )
    layers = json.loads(out.stdout)["layers"]
    assert [layer["layer"] for layer in layers] == list(range(1, 17))
    assert c.stop() == 0


def test_changed_daemon_file_is_reported_by_the_integrity_check(make_cluster: type[Cluster]) -> None:
    """Layer 14: a watched file changing under the running daemon is logged and published as an event."""
    c = make_cluster(workers=1)
    watched = c.dir / "policy.txt"
    watched.write_text("v1")
    c.write_config(f'\n[security.integrity]\ninterval_s = 1\nfiles = ["{watched}"]\n')
    c.start()
    sub = c.subscribe()
    watched.write_text("v2 tampered")
    wait_for(lambda: "integrity_violation" in c.log(), what="the integrity violation to be logged")
    logged = [e for e in c.log_events() if e.get("event") == "integrity_violation"]
    assert logged and logged[0]["path"] == str(watched)
    published = []
    deadline = time.monotonic() + 15
    while not published and time.monotonic() < deadline:
        if sub.poll(500):
            topic, payload = sub.recv_multipart()
            if topic == b"security.integrity":
                published.append(decode(payload).body)
    sub.close()
    assert published and published[0]["path"] == str(watched)
    assert c.stop() == 0
