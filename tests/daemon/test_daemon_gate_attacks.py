"""Attacks on the control gateway of a real daemon (issue 10): each one is stopped, and service continues.

Rate limits follow the client's identity, not its connection; refusals cannot flood the audit log; the
audit chain is keyed from the first start; the CLI signs when signatures are required; and the protocol
corner cases (nil body, empty decode reasons, a reply type sent as a request) get the documented answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest
import zmq
from daemon_harness import Cluster, wait_for

from openfang.protocol.envelope import Envelope, decode, encode
from openfang.security._canon import canonical_json
from openfang.security.audit import key_beside, verify
from openfang.security.signing import SigningKey, sign

pytestmark = pytest.mark.integration


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(c: Cluster) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(c.data_dir / "audit.db") as db:
        rows = db.execute("SELECT kind, record FROM audit_log ORDER BY seq").fetchall()
    return [(kind, json.loads(record)["fields"]) for kind, record in rows]


def _burst(sock: zmq.Socket[bytes], envs: list[Envelope], timeout: float = 15.0) -> list[Envelope]:
    """Send every envelope at once on ``sock``, then collect one reply per envelope."""
    for env in envs:
        sock.send(encode(env))
    replies = []
    for _ in envs:
        assert sock.poll(int(timeout * 1000)), "no reply"
        replies.append(decode(sock.recv()))
    return replies


def _dealer(c: Cluster) -> zmq.Socket[bytes]:
    sock = c.zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(c.endpoint)
    return sock


def _limited(replies: list[Envelope]) -> list[Envelope]:
    return [r for r in replies if r.is_error and r.body["code"] == "rate_limited"]


# ---- item 3: the rate limit follows the identity ----------------------------------------------------------


def test_ratelimit_many_ipc_connections_of_one_uid_share_one_allowance(make_cluster: type[Cluster]) -> None:
    """Ten fresh connections from one uid get one allowance between them, not ten (ipc peer credentials)."""
    c = make_cluster(workers=1)
    c.write_config("\n[security.ratelimit.client_requests]\nrate = 0.5\nburst = 10\n")
    c.start()
    replies: list[Envelope] = []
    for _ in range(10):  # what an attacker does to get a fresh allowance: reconnect
        sock = _dealer(c)
        replies += _burst(sock, [Envelope(type="ping") for _ in range(5)])
        sock.close()
    limited = _limited(replies)
    # 50 requests against burst 10 (+0.5/s refill): at least 35 refused, whatever the machine's speed.
    assert len(limited) >= 35, [r.body for r in replies]
    assert all(r.body["retry_after_ms"] > 0 for r in limited)
    assert any(f.get("key") == f"uid:{os.getuid()}" for k, f in _records(c) if k == "ratelimit.limited")
    assert c.stop() == 0


def test_ratelimit_curve_client_is_limited_across_connections_and_others_are_not(
    make_cluster: type[Cluster],
) -> None:
    """Over tcp, every connection with alice's CURVE key shares alice's bucket; bob's key has its own."""
    from openfang.protocol.curve import CurveClient, generate_keys

    c = make_cluster(workers=1)
    keys = c.dir / "keys"
    generate_keys(keys, "alice")
    generate_keys(keys, "bob")
    port, events = _free_port(), _free_port()
    text = c.config_path.read_text().replace(
        "[control]\n",
        f'[control]\nendpoint = "tcp://127.0.0.1:{port}"\nevents = "tcp://127.0.0.1:{events}"\n'
        f'keys_dir = "{keys}"\n',
    )
    c.config_path.write_text(text + "\n[security.ratelimit.client_requests]\nrate = 0.5\nburst = 8\n")
    c.start()

    def connect(name: str) -> zmq.Socket[bytes]:
        sock = c.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        CurveClient(keys, name=name).apply(sock)
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock

    alice: list[Envelope] = []
    for _ in range(6):
        sock = connect("alice")
        alice += _burst(sock, [Envelope(type="ping") for _ in range(4)])
        sock.close()
    assert len(_limited(alice)) >= 12, [r.body for r in alice]
    bob = connect("bob")
    assert _limited(_burst(bob, [Envelope(type="ping") for _ in range(4)])) == []
    bob.close()
    assert any(f.get("key") == "curve:alice" for k, f in _records(c) if k == "ratelimit.limited")
    assert c.stop() == 0


def test_ratelimit_signed_requests_are_charged_to_their_key_and_the_global_ceiling_holds(
    make_cluster: type[Cluster],
) -> None:
    """On one connection, each signing key has its own allowance; all keys together stop at the ceiling."""
    c = make_cluster(workers=1)
    ops, ci = os.urandom(32), os.urandom(32)
    (c.dir / "ops.key").write_text(ops.hex())
    (c.dir / "ci.key").write_text(ci.hex())
    c.write_config(
        "\n[security.signing]\n"
        f'keys = [{{id = "ops", alg = "hmac-sha256", file = "{c.dir / "ops.key"}"}},\n'
        f'        {{id = "ci", alg = "hmac-sha256", file = "{c.dir / "ci.key"}"}}]\n'
        "[security.ratelimit.client_requests]\nrate = 0.2\nburst = 6\n"
        "[security.ratelimit.global_requests]\nrate = 0.2\nburst = 12\n"
    )
    c.start()
    ops_key, ci_key = SigningKey.hmac("ops", ops), SigningKey.hmac("ci", ci)
    first = _burst(c.sock, [sign(Envelope(type="ping"), ops_key) for _ in range(10)])
    assert len(_limited(first)) >= 3  # ops is past its burst of 6 ...
    second = _burst(c.sock, [sign(Envelope(type="ping"), ci_key) for _ in range(4)])
    assert _limited(second) == []  # ... while ci, on the very same connection, is not
    # Unsigned requests are the uid's: its bucket has 6, but only 12 requests pass in total (10 did).
    third = _burst(c.sock, [Envelope(type="ping") for _ in range(6)])
    assert len(_limited(third)) >= 2, [r.body for r in third]
    assert any("global_requests" in r.body["message"] for r in _limited(third))
    assert c.stop() == 0


# ---- item 4: refusals cannot flood the audit log ----------------------------------------------------------


def test_refusal_flood_writes_a_bounded_number_of_audit_records(make_cluster: type[Cluster]) -> None:
    """300 refused requests write a handful of records: the first of each kind, then a counted summary."""
    c = make_cluster(workers=1)
    key = c.dir / "ops.key"
    key.write_text(os.urandom(32).hex())
    c.write_config(
        "\n[security.audit]\nrefusal_window_s = 2\n"
        f'[security.signing]\nrequire = true\nkeys = [{{id = "ops", alg = "hmac-sha256", file = "{key}"}}]\n'
    )
    c.start()
    forger = SigningKey.hmac("ops", os.urandom(32))
    replies: list[Envelope] = []
    for i in range(10):  # across fresh connections, as a prober would
        sock = _dealer(c)
        envs = [Envelope(type="ping") for _ in range(15)] + [
            sign(Envelope(type="ping"), forger) for _ in range(15)
        ]
        replies += _burst(sock, envs)
        sock.close()
        if i == 4:
            time.sleep(2.1)  # one window boundary inside the probe
    assert len(replies) == 300 and all(r.is_error and r.body["code"] == "denied" for r in replies)
    wait_for(lambda: any(k == "audit.suppressed" for k, _ in _records(c)), timeout=10, what="a summary")
    time.sleep(2.1)
    c.stop()
    records = _records(c)
    refusals = [f for k, f in records if k.startswith("signing.")]
    summaries = [f for k, f in records if k == "audit.suppressed"]
    assert len(refusals) <= 6, records  # first unsigned + first forged, per window (2-3 windows)
    counted = sum(e["count"] for s in summaries for e in s["entries"]) + sum(s["others"] for s in summaries)
    assert len(refusals) + counted == 300
    assert all(e["source"] == f"uid:{os.getuid()}" for s in summaries for e in s["entries"])
    assert verify(c.data_dir / "audit.db", key=key_beside(c.data_dir / "audit.db")).ok


# ---- item 5: the audit chain is keyed from the first start ------------------------------------------------


def _rebuild_unkeyed(db_path: Any) -> None:
    """What an attacker with write access does: edit a record and rebuild every hash (plain SHA-256)."""
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        rows = db.execute("SELECT seq, record FROM audit_log ORDER BY seq").fetchall()
        prev = "0" * 64
        for seq, record in rows:
            body = json.loads(record)
            body["prev"] = prev
            body["fields"]["tampered"] = True
            text = canonical_json(body)
            digest = hashlib.sha256(text.encode()).hexdigest()
            db.execute(
                "UPDATE audit_log SET record = ?, prev = ?, hash = ? WHERE seq = ?", (text, prev, digest, seq)
            )
            prev = digest


def test_audit_key_is_made_at_first_start_and_a_rebuilt_chain_fails_verify(
    make_cluster: type[Cluster],
) -> None:
    """The daemon makes a 0600 chain key; a chain rebuilt without it fails 'openfang audit verify'."""
    c = make_cluster(workers=1)
    c.write_config("\n[security.ratelimit.client_requests]\nrate = 0.1\nburst = 1\n")
    c.start()
    key = c.data_dir / "audit.key"
    assert key.is_file() and (key.stat().st_mode & 0o777) == 0o600
    report = json.loads(_ctl("security", "report", "--endpoint", c.endpoint, "--json").stdout)
    audit_layer = next(layer for layer in report["layers"] if layer["name"] == "audit logging")
    assert audit_layer["config"]["hmac"] is True and "warning" not in audit_layer["config"]
    for _ in range(3):  # refused (burst 1, spent by the report): records for the chain
        c.call("ping")
    assert c.stop() == 0
    good = _ctl("audit", "verify", "--config", str(c.config_path), "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["keyed"] is True, good.stdout + good.stderr
    _rebuild_unkeyed(c.data_dir / "audit.db")
    bad = _ctl("audit", "verify", "--config", str(c.config_path), "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["first_bad_index"] == 0, bad.stdout
    same = _ctl("audit", "verify", "--path", str(c.data_dir / "audit.db"), "--json")  # key found beside it
    assert same.returncode == 1, same.stdout


def test_security_report_flags_an_unkeyed_chain(make_cluster: type[Cluster]) -> None:
    """With keyed = false no key is made, and the report (JSON and text) warns about the unkeyed chain."""
    c = make_cluster(workers=1)
    c.write_config("\n[security.audit]\nkeyed = false\n")
    c.start()
    assert not (c.data_dir / "audit.key").exists()
    report = json.loads(_ctl("security", "report", "--endpoint", c.endpoint, "--json").stdout)
    audit_layer = next(layer for layer in report["layers"] if layer["name"] == "audit logging")
    assert audit_layer["config"]["hmac"] is False and "unkeyed" in audit_layer["config"]["warning"]
    text = _ctl("security", "report", "--endpoint", c.endpoint).stdout
    assert "WARNING" in text and "unkeyed" in text
    assert c.stop() == 0


# ---- item 6: the CLI signs ---------------------------------------------------------------------------------


def test_cli_signs_its_requests_when_signatures_are_required(make_cluster: type[Cluster]) -> None:
    """With require = true the CLI is served when it signs (config key ring or --sign-key), else refused."""
    c = make_cluster(workers=1)
    key = c.dir / "ops.key"
    key.write_text(os.urandom(32).hex())
    keys = f'keys = [{{id = "ops", alg = "hmac-sha256", file = "{key}"}}]\n'
    c.write_config(f"\n[security.signing]\nrequire = true\n{keys}")
    c.start()
    unsigned = _ctl("ping", "--endpoint", c.endpoint, "--json")
    assert unsigned.returncode == 1 and "unsigned" in json.loads(unsigned.stdout)["error"]["message"]
    by_config = _ctl("status", "--config", str(c.config_path), "--json")
    assert by_config.returncode == 0 and json.loads(by_config.stdout)["state"] == "running", by_config.stderr
    by_flag = _ctl("ping", "--endpoint", c.endpoint, "--sign-key", str(key), "--json")  # id: the file stem
    assert by_flag.returncode == 0, by_flag.stdout + by_flag.stderr
    by_env = _ctl(
        "agent",
        "list",
        "--endpoint",
        c.endpoint,
        env={"OPENFANG_SIGN_KEY": str(key), "OPENFANG_SIGN_KEY_ID": "ops"},
    )
    assert by_env.returncode == 0, by_env.stderr
    wrong = _ctl("ping", "--endpoint", c.endpoint, "--sign-key", str(key), "--sign-key-id", "nobody")
    assert wrong.returncode == 1 and "unknown key" in wrong.stderr
    assert c.stop() == 0


# ---- item 10: protocol corner cases ------------------------------------------------------------------------


def test_protocol_nil_body_empty_reasons_and_reply_types_sent_as_requests(
    make_cluster: type[Cluster],
) -> None:
    """body nil is an empty body; a broken frame's reason is never empty; ping.ok as a request is unknown."""
    import msgpack

    c = make_cluster(workers=1).start()
    nil_body = msgpack.packb({"v": 1, "id": "nil-1", "type": "ping", "body": None})
    c.send_raw(nil_body)
    reply = c.recv_env()
    assert (reply.id, reply.type) == ("nil-1", "ping.ok"), reply.body
    for junk in (b"\xc1", b"\x84\xa1v\x01", b"\x80\x80"):
        c.send_raw(junk)
        err = c.recv_env()
        assert err.body["code"] == "bad_request"
        reason = err.body["message"].split("not valid msgpack:", 1)[1].strip()
        assert reason, err.body
    reply_as_request = msgpack.packb({"v": 1, "id": "r-1", "type": "ping.ok", "body": {"pid": "x"}})
    c.send_raw(reply_as_request)
    err = c.recv_env()
    assert (err.id, err.body["code"]) == ("r-1", "unknown_type"), err.body
    assert c.stop() == 0
