"""The shipped systemd unit: verified by systemd-analyze, exposure <= 2.5, and runnable on systemd 252.

Needs ``systemd-analyze`` (Debian's ``systemd`` package; ``make test`` installs it when missing). Without it
the tests skip, except under CI (``CI=true``), where a missing tool is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "openfang.service"
DROP_IN = ROOT / "examples" / "openfang.service.d" / "notify-reload.conf"
SHELL_DROP_IN = ROOT / "examples" / "openfang.service.d" / "shell-exec.conf"
MAX_EXPOSURE = 2.5


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        why = "systemd-analyze is not installed (apt-get install systemd; 'make test' installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return tool


def _systemd_version(tool: str) -> int:
    first = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"systemd (\d+)", first)
    assert match, first
    return int(match.group(1))


def _installed_copy(tmp_path: Path, *, drop_in: Path | None = None) -> Path:
    """The unit as installed, with ExecStart pointing at this venv's openfang-supervisor (verify checks that
    the binary exists)."""
    binary = Path(sys.executable).parent / "openfang-supervisor"
    assert binary.exists(), binary
    unit = tmp_path / "openfang.service"
    unit.write_text(UNIT.read_text().replace("/opt/openfang/bin/openfang-supervisor", str(binary)))
    if drop_in is not None:
        (tmp_path / "openfang.service.d").mkdir()
        shutil.copy(drop_in, tmp_path / "openfang.service.d" / drop_in.name)
    return unit


def _exposure(tool: str, unit: Path) -> tuple[float, str]:
    res = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = res.stdout + res.stderr
    match = re.search(r"Overall exposure level for openfang\.service: (\d+(?:\.\d+)?)", out)
    assert match, out
    return float(match.group(1)), out


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit with no complaint (Type=notify-reload was rejected on 252)."""
    tool = _analyze()
    unit = _installed_copy(tmp_path)
    res = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if "openfang" in line]
    assert not complaints, complaints


def test_unit_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    """systemd-analyze security --offline=true scores the unit <= 2.5, with W^X memory left to wasmtime."""
    tool = _analyze()
    score, out = _exposure(tool, _installed_copy(tmp_path))
    assert score <= MAX_EXPOSURE, out
    # wasmtime compiles guests to machine code: executable memory must stay allowed.
    assert re.search(r"✗ MemoryDenyWriteExecute=", out), "MemoryDenyWriteExecute must stay off for wasmtime"


def test_unit_runs_on_systemd_252_with_its_own_user_dirs_and_data_dir() -> None:
    """Type=notify with ExecReload (not notify-reload), DynamicUser, the three directories, and a data dir
    under StateDirectory passed to the daemon (not a relative one resolved under read-only /etc)."""
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify" and settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["DynamicUser"] == "yes"
    assert settings["StateDirectory"] == settings["RuntimeDirectory"] == "openfang"
    assert settings["ConfigurationDirectory"] == "openfang"
    assert "--data-dir /var/lib/openfang" in settings["ExecStart"]
    assert "--config /etc/openfang/cluster.toml" in settings["ExecStart"]
    assert settings["Environment"] == "OPENFANG_RUNTIME_DIR=/run/openfang"


def test_notify_reload_drop_in_needs_systemd_253(tmp_path: Path) -> None:
    """The notify-reload drop-in is for systemd >= 253: older versions reject its type, newer accept it."""
    tool = _analyze()
    unit = _installed_copy(tmp_path, drop_in=DROP_IN)
    res = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    rejected = "Failed to parse service type" in res.stdout + res.stderr
    assert rejected == (_systemd_version(tool) < 253), res.stdout + res.stderr


def test_shell_exec_drop_in_verifies_and_stays_at_most_2_5(tmp_path: Path) -> None:
    """The drop-in letting shell_exec's bubblewrap make its namespaces verifies; exposure stays <= 2.5."""
    tool = _analyze()
    unit = _installed_copy(tmp_path, drop_in=SHELL_DROP_IN)
    res = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "openfang" not in res.stdout + res.stderr, res.stdout + res.stderr
    score, out = _exposure(tool, unit)
    assert score <= MAX_EXPOSURE, out
    assert "✗ RestrictNamespaces=~user" in out  # the drop-in is in effect
