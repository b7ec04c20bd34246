"""Layer 14: changed, missing and replaced files are reported by the integrity monitor and audited once."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from openfang.security.audit import AuditLog
from openfang.security.integrity import IntegrityMonitor, package_files


def test_integrity_modified_file_is_detected_even_with_restored_mtime(
    tmp_path: Path, audit: AuditLog
) -> None:
    """Content is hashed, so restoring the mtime after an edit does not hide it; audited once."""
    f = tmp_path / "gateway.py"
    f.write_text("print('ok')\n")
    other = tmp_path / "other.py"
    other.write_text("x = 1\n")
    mon = IntegrityMonitor([f, other], audit=audit)
    assert mon.check() == []
    st = f.stat()
    f.write_text("print('pwned')\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    (v,) = mon.check()
    assert v.kind == "modified" and v.path == str(f.resolve())
    mon.check()  # the same violation again: no second audit record
    assert len(audit.records("integrity.violation")) == 1


def test_integrity_missing_file_and_rebaseline(tmp_path: Path) -> None:
    """A deleted file is 'missing'; after a deliberate upgrade, rebaseline accepts the new state."""
    f = tmp_path / "a.py"
    f.write_text("a")
    mon = IntegrityMonitor([f])
    f.unlink()
    assert [v.kind for v in mon.check()] == ["missing"]
    f.write_text("b")
    mon.rebaseline()
    assert mon.check() == []


def test_integrity_replaced_module_object_is_detected(tmp_path: Path) -> None:
    """A loaded module swapped in sys.modules for one from another file is reported."""
    src = tmp_path / "sec_integrity_probe.py"
    src.write_text("VALUE = 1\n")
    mod = types.ModuleType("sec_integrity_probe")
    mod.__file__ = str(src)
    sys.modules["sec_integrity_probe"] = mod
    try:
        mon = IntegrityMonitor(modules=["sec_integrity_probe"])
        assert mon.check() == []
        evil = types.ModuleType("sec_integrity_probe")
        evil.__file__ = str(tmp_path / "elsewhere.py")
        sys.modules["sec_integrity_probe"] = evil
        assert [v.kind for v in mon.check()] == ["module_replaced"]
    finally:
        del sys.modules["sec_integrity_probe"]


def test_integrity_watches_the_security_package_itself() -> None:
    """package_files finds the engine's own modules, and an untouched tree checks clean."""
    files = package_files("openfang.security")
    assert any(p.name == "integrity.py" for p in files)
    mon = IntegrityMonitor(files)
    assert mon.watched == len(files) and mon.check() == []


def test_integrity_baseline_resolves_paths_as_pathlib_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline's paths are Path.resolve()'s, through linked directories, '..' after a link, a linked
    file and a relative path (directories are resolved once per baseline, files through links)."""
    real = tmp_path / "real" / "deep"
    real.mkdir(parents=True)
    (real / "a.py").write_text("a")
    (tmp_path / "real" / "b.py").write_text("b")
    (tmp_path / "top.py").write_text("t")
    (tmp_path / "link").symlink_to(real)
    (real / "c.py").symlink_to(tmp_path / "top.py")
    monkeypatch.chdir(tmp_path)
    paths = [
        "link/a.py",
        "link/../b.py",
        "link/c.py",
        "real/deep/a.py",
        str(tmp_path / "link" / "a.py"),
        "top.py",
    ]
    monitor = IntegrityMonitor(paths)
    assert monitor.files() == sorted({str(Path(p).resolve()) for p in paths})
    assert monitor.check() == []
