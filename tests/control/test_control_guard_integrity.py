"""The integrity layer's baseline covers every folder of the import root, the control plane included."""

from __future__ import annotations

from pathlib import Path

from openfang.security.config import SecurityConfig, parse_security
from openfang.security.integrity import baseline_monitor, import_root_packages

ROOT = Path(__file__).resolve().parents[2]


def test_import_root_packages_names_every_subpackage_folder() -> None:
    """Each subpackage beside the root package (control, workers, ...) is in the integrity walk."""
    assert set(import_root_packages()) >= {
        "openfang",
        "openfang.cli",
        "openfang.control",
        "openfang.memory",
        "openfang.protocol",
        "openfang.security",
        "openfang.supervisor",
        "openfang.workers",
    }


def test_integrity_baseline_includes_gateway_and_worker_files(tmp_path: Path) -> None:
    """A change to control/gateway.py or workers/worker.py would be seen: both are in the baseline."""
    config: SecurityConfig = parse_security(
        {"integrity": {"enabled": True}}, "cluster.toml", data_dir=tmp_path, base_dir=tmp_path
    )
    monitor = baseline_monitor(config.integrity, None)
    watched = {Path(p).resolve() for p in monitor.files()}
    for rel in ("control/gateway.py", "workers/worker.py", "protocol/messages.py", "openfang/logs.py"):
        assert (ROOT / rel).resolve() in watched, f"{rel} is not in the integrity baseline"
