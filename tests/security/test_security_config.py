"""[security] config: defaults are safe, every problem is reported with its place, keys load from files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from openfang.protocol.errors import ConfigError
from openfang.security.audit import verify
from openfang.security.config import SecurityConfig, open_audit, parse_security
from openfang.security.report import security_report
from openfang.security.signing import keyring_from_files

FULL = """
[security.audit]
path = "{data_dir}/audit.db"
key_file = "keys/audit.key"

[security.injection]
threshold = 0.6
action = "flag"

[security.ratelimit.client_requests]
rate = 5
burst = 10

[security.signing]
require = true
keys = [{ id = "ops-1", alg = "hmac-sha256", file = "keys/ops-1.key" }]

[security.sandbox]
fuel_max = 1000000
fuel_default = 1000
allow = ["openfang.*"]

[security.attestation.publishers]
acme = "%s"

[security.rollback]
state = "{data_dir}/versions.db"
""" % ("ab" * 32)


def test_config_empty_table_gives_safe_defaults() -> None:
    """No [security] table: every layer on, injection blocks user input, permissions default deny."""
    cfg = parse_security(None, "c.toml")
    assert cfg == SecurityConfig(source="c.toml")
    assert cfg.injection.action == "block" and cfg.attestation.require_pin


def test_config_full_table_parses_and_resolves_paths(tmp_path: Path) -> None:
    """Every sub-table is read; {data_dir} and relative paths are resolved."""
    cfg = parse_security(
        tomllib.loads(FULL)["security"], "c.toml", data_dir=tmp_path / "data", base_dir=tmp_path
    )
    assert cfg.audit.path == str(tmp_path / "data" / "audit.db")
    assert cfg.audit.key_file == str(tmp_path / "keys" / "audit.key")
    assert cfg.injection.threshold == 0.6 and cfg.injection.action == "flag"
    assert cfg.ratelimit.client_requests.rate == 5 and cfg.signing.require
    assert cfg.signing_keys[0].file == str(tmp_path / "keys" / "ops-1.key")
    assert cfg.attestation.trusted_publishers == {"acme": bytes.fromhex("ab" * 32)}


def test_config_reports_every_problem_with_its_place() -> None:
    """Typos, bad types, bad choices and contradictions are all listed at once."""
    bad = {
        "injection": {"action": "nuke", "treshold": 0.5},
        "ratelimit": {"agent_tokens": {"rate": 10, "burst": 0}},
        "signing": {"require": True},
        "sandbox": {"fuel_default": 10, "fuel_max": 5},
        "attestation": {"publishers": {"acme": "zz"}},
        "exfil": {"pii": ["email", "dna"]},
        "firewall": {},
    }
    with pytest.raises(ConfigError) as err:
        parse_security(bad, "c.toml")
    wheres = [p.where for p in err.value.problems]
    assert wheres == [
        "c.toml: [security.injection] key 'action'",
        "c.toml: [security.injection] key 'treshold'",
        "c.toml: [security.ratelimit.agent_tokens] key 'burst'",
        "c.toml: [security.signing] key 'require'",
        "c.toml: [security.sandbox] key 'fuel_default'",
        "c.toml: [security.exfil] key 'pii'",
        "c.toml: [security.attestation.publishers] key 'acme'",
        "c.toml: [security.firewall]",
    ]


def test_config_signing_keys_load_from_files_and_errors_never_show_material(tmp_path: Path) -> None:
    """HMAC and Ed25519 key files load into a KeyRing; a short secret is reported without its content."""
    (tmp_path / "ops.key").write_text("0f" * 32)
    (tmp_path / "ci.pub").write_bytes(b"\x01" * 32)
    (tmp_path / "short.key").write_text("tiny-secret-value")
    cfg = parse_security(
        {
            "signing": {
                "keys": [
                    {"id": "ops", "alg": "hmac-sha256", "file": "ops.key"},
                    {"id": "ci", "alg": "ed25519", "file": "ci.pub"},
                ]
            }
        },
        "c.toml",
        base_dir=tmp_path,
        check_files=True,
    )
    ring = keyring_from_files(cfg.signing_keys)
    assert ring.kids() == ["ci", "ops"]
    bad = parse_security(
        {
            "signing": {
                "keys": [
                    {"id": "s", "alg": "hmac-sha256", "file": "short.key"},
                    {"id": "m", "alg": "hmac-sha256", "file": "missing.key"},
                ]
            }
        },
        "c.toml",
        base_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as err:
        keyring_from_files(bad.signing_keys)
    assert len(err.value.problems) == 2 and "tiny-secret-value" not in str(err.value)


def test_report_lists_sixteen_layers_without_secrets(tmp_path: Path) -> None:
    """The report has layers 1..16 in order, is JSON-able and holds key ids/paths, not key material."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ops-1.key").write_text("5e" * 32)
    cfg = parse_security(tomllib.loads(FULL)["security"], "c.toml", data_dir=tmp_path, base_dir=tmp_path)
    report = security_report(cfg)
    assert [r["layer"] for r in report] == list(range(1, 17))
    text = json.dumps(report)
    assert "5e5e5e" not in text and "ops-1" in text
    by_name = {r["name"]: r for r in report}
    assert by_name["prompt-injection detection"]["config"]["action"] == "flag"
    assert by_name["request signing"]["config"]["require"] is True
    assert all(set(r) == {"layer", "name", "module", "enabled", "config"} for r in report)


def test_injection_block_threshold_is_parsed_and_must_not_be_below_threshold() -> None:
    """[security.injection] block_threshold: where flagging turns into the action; never below threshold."""
    from openfang.protocol.errors import ConfigError
    from openfang.security.config import parse_security

    cfg = parse_security({"injection": {"threshold": 0.4, "block_threshold": 0.9}}, "c.toml")
    assert (cfg.injection.threshold, cfg.injection.block_threshold) == (0.4, 0.9)
    try:
        parse_security({"injection": {"threshold": 0.6, "block_threshold": 0.5}}, "c.toml")
    except ConfigError as exc:
        assert "block_threshold" in str(exc) and "must be >= threshold" in str(exc)
    else:
        raise AssertionError("a block_threshold below threshold was accepted")


def test_open_audit_creates_its_directory_uses_the_key_and_needs_a_data_dir(tmp_path: Path) -> None:
    """open_audit makes the log's folder, chains with the key file's HMAC, and is None without a data dir."""
    (tmp_path / "key").write_text("ab" * 32)
    table = {"audit": {"path": "{data_dir}/deep/audit.db", "key_file": "key"}}
    config = parse_security(table, "t.toml", data_dir=tmp_path / "data", base_dir=tmp_path)
    audit = open_audit(config)
    assert audit is not None
    audit.append("test.opened", n=1)
    audit.close()
    assert (tmp_path / "data" / "deep" / "audit.db").is_file()
    assert verify(tmp_path / "data" / "deep" / "audit.db", key=bytes.fromhex("ab" * 32)).ok
    assert not verify(tmp_path / "data" / "deep" / "audit.db", key=b"wrong").ok
    assert open_audit(parse_security({}, "t.toml")) is None  # "{data_dir}" unresolved: no stray folder
    assert not Path("{data_dir}").exists()


def test_config_sandbox_table_maxima_parse_and_are_bounded() -> None:
    """[security.sandbox] table_elements_max / tables_max default to 1,000,000 / 16 and are range-checked."""
    assert parse_security(None, "c.toml").sandbox.table_elements_max == 1_000_000
    cfg = parse_security({"sandbox": {"table_elements_max": 5000, "tables_max": 2}}, "c.toml")
    assert (cfg.sandbox.table_elements_max, cfg.sandbox.tables_max) == (5000, 2)
    with pytest.raises(ConfigError) as err:
        parse_security({"sandbox": {"table_elements_max": -1, "tables_max": 1000}}, "c.toml")
    assert [p.where for p in err.value.problems] == [
        "c.toml: [security.sandbox] key 'table_elements_max'",
        "c.toml: [security.sandbox] key 'tables_max'",
    ]


def test_security_from_args_takes_the_config_parsed_for_the_same_data(tmp_path: Path) -> None:
    """A child forked with the very data security_args made (a shallow copy of the dict, as each worker's
    args hold it) gets the config parsed in the root, not a second parse; the same data rebuilt (a copy of
    the table, as msgpack gives a nested supervisor) or with other paths is parsed again, to the same
    config or its own."""
    import copy

    from openfang.security.config import security_args, security_from_args

    table = {"injection": {"threshold": 0.4}, "integrity": {"files": ["watched"]}}
    parsed = parse_security(table, "c.toml", data_dir=tmp_path, base_dir=tmp_path)
    args = security_args(table, source="c.toml", data_dir=tmp_path, base_dir=tmp_path, parsed=parsed)
    assert security_from_args(dict(args)) is parsed
    again = security_from_args(copy.deepcopy(args))
    assert again is not parsed and again == parsed
    other = security_from_args({**args, "base_dir": str(tmp_path / "sub")})
    assert other.integrity.files == (str(tmp_path / "sub" / "watched"),)
    assert security_from_args({**args, "source": "other.toml"}).source == "other.toml"


def test_security_from_args_still_rejects_a_bad_table_of_its_own(tmp_path: Path) -> None:
    """A child whose own security data is not what the root parsed (its own table) is parsed and checked
    as before: a bad value fails it, naming the key."""
    from openfang.security.config import security_args, security_from_args

    good = parse_security({}, "c.toml", data_dir=tmp_path, base_dir=tmp_path)
    security_args({}, source="c.toml", data_dir=tmp_path, base_dir=tmp_path, parsed=good)
    bad = security_args(
        {"injection": {"threshold": 7}}, source="c.toml", data_dir=tmp_path, base_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="threshold"):
        security_from_args(bad)


def test_prepare_security_args_gives_a_forked_child_its_own_table_parsed(tmp_path: Path) -> None:
    """A child's own [security] data prepared in the parent is taken as is by that child (same objects, the
    same data dir from its environment); another data dir or a copy of the table is parsed again."""
    import copy

    from openfang.security.config import prepare_security_args, security_from_args

    args = {"source": "cluster.toml", "table": {"ratelimit": {"agent_requests": {"rate": 0, "burst": 0}}}}
    prepare_security_args(args, data_dir=str(tmp_path))
    taken = security_from_args(dict(args), data_dir=str(tmp_path))
    assert security_from_args(args, data_dir=str(tmp_path)) is taken
    assert taken.ratelimit.agent_requests.rate == 0
    assert taken.audit.path.startswith(str(tmp_path))
    other = security_from_args(args, data_dir=str(tmp_path / "other"))
    assert other is not taken and other.audit.path.startswith(str(tmp_path / "other"))
    again = security_from_args(copy.deepcopy(args), data_dir=str(tmp_path))
    assert again is not taken and again == taken


def test_prepare_security_args_leaves_a_bad_table_to_fail_in_the_child(tmp_path: Path) -> None:
    """Data that does not parse is not recorded: the child's own parse still fails, naming the key."""
    from openfang.security.config import prepare_security_args, security_from_args

    args = {"source": "cluster.toml", "table": {"injection": {"threshold": 7}}}
    prepare_security_args(args, data_dir=str(tmp_path))  # no exception here: the child reports it
    with pytest.raises(ConfigError, match=r"cluster.toml: \[security.injection\] key 'threshold'"):
        security_from_args(args, data_dir=str(tmp_path))


def test_cluster_config_prepares_a_workers_own_security_table(tmp_path: Path) -> None:
    """Loading cluster.toml parses a worker's own args.security once in the root: the worker's args (as it
    gets them after its fork) resolve to that config, with the cluster's data dir."""
    from openfang.control.config import load_config
    from openfang.security.config import security_from_args

    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[cluster]\nname = "t"\ndata_dir = "{tmp_path / "d"}"\n[supervisor]\nstrategy = "one_for_one"\n'
        '[[supervisor.children]]\nid = "w"\nstart = "openfang.workers.worker:main"\n'
        '[supervisor.children.args.security]\nsource = "cluster.toml"\n'
        "[supervisor.children.args.security.table.injection]\nthreshold = 0.3\n"
    )
    cluster = load_config(config)
    (worker,) = [c for c in cluster.tree.children if c.id == "w"]
    first = security_from_args(worker.args["security"], data_dir=str(cluster.data_dir))
    assert first.injection.threshold == 0.3
    assert security_from_args(worker.args["security"], data_dir=str(cluster.data_dir)) is first
