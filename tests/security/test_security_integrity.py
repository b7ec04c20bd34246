"""Layer 14: changed, missing and replaced files are reported by the integrity monitor and audited once."""

from __future__ import annotations

import os
import pkgutil
import sys
import types
from hashlib import sha256
from pathlib import Path

import pytest

from openfang.security import integrity
from openfang.security.audit import AuditLog
from openfang.security.integrity import IntegrityMonitor, package_files, resolved_package_files, subpackages


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


def _tree(tmp_path: Path) -> Path:
    """A package folder with a subpackage, a linked subpackage folder, a linked file, a non-package folder
    and files of other suffixes (links to folders are listed, not entered, as os.walk does)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "plain").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in (pkg / "__init__.py", pkg / "a.py", pkg / "sub" / "__init__.py", pkg / "sub" / "b.py"):
        path.write_text(f"# {path.name}\n")
    (pkg / "plain" / "c.py").write_text("c")
    (pkg / "notes.txt").write_text("not a module")
    (outside / "__init__.py").write_text("")
    (outside / "d.py").write_text("d")
    (tmp_path / "target.py").write_text("t")
    (pkg / "linked").symlink_to(outside)
    (pkg / "e.py").symlink_to(tmp_path / "target.py")
    (pkg / "dotted.dir").mkdir()
    (pkg / "dotted.dir" / "__init__.py").write_text("")
    return pkg


def test_integrity_resolved_package_files_are_package_files_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolved_package_files is package_files with each path resolved as Path.resolve does (a linked
    package folder walked through its link, a linked file through its link), sorted and without repeats."""
    (tmp_path / "_integrity_pkg").mkdir()
    _tree(tmp_path / "_integrity_pkg")
    monkeypatch.syspath_prepend(str(tmp_path / "_integrity_pkg"))
    try:
        for name in ("pkg", "pkg.sub", "pkg.linked"):
            want = sorted({str(p.resolve()) for p in package_files(name)})
            assert resolved_package_files(name) == want
        assert str((tmp_path / "_integrity_pkg" / "target.py").resolve()) in resolved_package_files("pkg")
        with pytest.raises(ValueError, match="not an importable package"):
            resolved_package_files("pkg.a")
    finally:
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]


def test_integrity_subpackages_are_those_pkgutil_lists(tmp_path: Path) -> None:
    """subpackages names the folders pkgutil.iter_modules marks as packages (a linked one included, a
    folder without __init__ or with a dot in its name not), in pkgutil's order."""
    pkg = _tree(tmp_path)
    want = [m.name for m in pkgutil.iter_modules([str(pkg)]) if m.ispkg]
    assert subpackages([str(pkg)]) == want == ["linked", "sub"]


def test_integrity_hash_reads_files_past_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file longer than one read is hashed whole, an empty file too; a folder is unreadable, as before."""
    monkeypatch.setattr(integrity, "READ_CHUNK", 7)
    big, empty = tmp_path / "big.bin", tmp_path / "empty.py"
    big.write_bytes(bytes(range(256)) * 3)
    empty.write_bytes(b"")
    mon = IntegrityMonitor([big, empty])
    assert mon.baseline()[str(big.resolve())] == (sha256(big.read_bytes()).hexdigest(), 768)
    assert mon.baseline()[str(empty.resolve())] == (sha256(b"").hexdigest(), 0)
    big.write_bytes(bytes(range(256)) * 3 + b"!")
    assert [v.kind for v in mon.check()] == ["modified"]
    with pytest.raises(IsADirectoryError):
        IntegrityMonitor([tmp_path])
