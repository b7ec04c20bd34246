"""Layer 14, runtime integrity: re-hash the daemon's own files and loaded modules, report any change.

:class:`IntegrityMonitor` takes a baseline (SHA-256, size) of registered files at construction — the
package files of OpenFANG itself (:func:`baseline_monitor`), the source files of loaded modules by module
name, and anything else the daemon relies on (guest modules, config). The daemon's loop calls :meth:`check`
periodically; it re-hashes *everything* (content, not mtime: an attacker can restore an mtime) and returns a
:class:`Violation` per changed, missing or replaced file. A violation is audited once when it appears (and
again if it changes), not on every tick, so a loop calling ``check`` each second does not flood the log.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from openfang.security._hashing import sha256_stream
from openfang.security.audit import AuditSink

if TYPE_CHECKING:
    from openfang.security.config import IntegrityConfig

READ_CHUNK = 1 << 20  # a file is hashed in reads of at most this many bytes

ViolationKind = Literal["modified", "missing", "unreadable", "module_replaced"]
Baseline = dict[str, tuple[str, int]]  # resolved path -> (SHA-256 hex digest, size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """One integrity failure: which file, what happened, the expected and actual digests."""

    path: str
    kind: ViolationKind
    expected: str
    actual: str = ""


def _hash(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The file's SHA-256 and size, read to its end. A regular file is read in one ``read`` of its size
    plus one byte when it is under READ_CHUNK (a short read of a regular file is its end: no second read
    to see it); anything else is read until a read returns nothing. Raises what ``open``/``read`` raise."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        regular = stat.S_ISREG(info.st_mode)
        want = min(info.st_size + 1, READ_CHUNK) if regular else READ_CHUNK
        h = sha256_stream()
        size = 0
        while chunk := os.read(fd, want):
            h.update(chunk)
            size += len(chunk)
            if regular and len(chunk) < want:
                break
        return h.hexdigest(), size
    finally:
        os.close(fd)


def package_files(package: str, *, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    """Every file with one of ``suffixes`` under an importable package's directory (sorted)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package!r} is not an importable package")
    out: list[Path] = []
    for root in spec.submodule_search_locations:
        for dirpath, _dirs, files in os.walk(root):
            out.extend(Path(dirpath, f) for f in files if f.endswith(suffixes))
    return sorted(set(out))


def resolved_package_files(package: str, *, suffixes: tuple[str, ...] = (".py",)) -> list[str]:
    """The paths :class:`IntegrityMonitor` resolves :func:`package_files` to, found with fewer system calls
    (layer 14's baseline is on the daemon's start: ~200 files). Each search location is resolved once and
    walked as :func:`os.walk` walks it (links to directories listed, not entered); a file that is not a link
    is its resolved directory joined with its name (the directory entry says so: no ``lstat``), a linked file
    is resolved through its link. Sorted."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package!r} is not an importable package")
    out: set[str] = set()
    for root in spec.submodule_search_locations:
        _walk_resolved(root, os.path.realpath(root), suffixes, out)
    return sorted(out)


def _walk_resolved(path: str, real: str, suffixes: tuple[str, ...], out: set[str]) -> None:
    """Add the resolved path of each file under ``path`` (whose resolved path is ``real``) to ``out``."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return  # as os.walk: a folder that cannot be listed is skipped
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            try:
                linked = entry.is_symlink()
            except OSError:
                linked = True
            if not linked:
                _walk_resolved(entry.path, os.path.join(real, entry.name), suffixes, out)
        elif entry.name.endswith(suffixes):
            try:
                linked = entry.is_symlink()
            except OSError:
                linked = True
            out.add(str(Path(entry.path).resolve()) if linked else os.path.join(real, entry.name))


def subpackages(path: Iterable[str]) -> list[str]:
    """The names of the packages directly in the folders ``path`` (a package's ``__path__``), as
    :func:`pkgutil.iter_modules` lists those it marks ``ispkg``: a folder whose name has no dot, holding an
    ``__init__`` module file, each name once (a module file of the same name found first hides it)."""
    inits = {f"__init__{suffix}" for suffix in importlib.machinery.all_suffixes()}
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    seen: set[str] = set()
    found: list[str] = []
    for folder in path:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            modname = next((name[: -len(s)] for s in suffixes if name.endswith(s)), None)
            if modname == "__init__" or (modname is not None and modname in seen):
                continue
            if modname is None:
                sub = os.path.join(folder, name)
                if "." in name or not os.path.isdir(sub):
                    continue
                try:
                    if inits.isdisjoint(os.listdir(sub)):
                        continue
                except OSError:
                    continue
                modname = name
                if modname in seen:
                    continue
                found.append(name)
            if "." not in modname:
                seen.add(modname)
    return found


def import_root_packages() -> tuple[str, ...]:
    """The import root and each of its subpackages, found rather than listed so none is forgotten.

    In a checkout the subpackages live in their own folders (linked into ``openfang/``) and the file walk
    does not follow links, so each is walked on its own; in a wheel the overlap is removed by the walk.
    """
    import openfang

    return ("openfang", *sorted(f"openfang.{name}" for name in subpackages(openfang.__path__)))


def baseline_monitor(config: IntegrityConfig, audit: AuditSink | None) -> IntegrityMonitor:
    """Layer 14's monitor for ``[security.integrity]``: a baseline of its ``files`` and of its packages'
    files (``"openfang"``: the import root and every subpackage, :func:`import_root_packages`)."""
    resolved: list[str] = []
    for package in config.packages:
        for name in import_root_packages() if package == "openfang" else (package,):
            resolved.extend(resolved_package_files(name))
    return IntegrityMonitor(config.files, audit=audit, resolved=resolved)


def _resolve(path: str, dirs: dict[str, str]) -> str:
    """``str(Path(path).resolve())``, each directory resolved once: a file that is not itself a link
    resolves to its resolved directory joined with its name (a package's ~200 files: 6 -> 1 ms of ``lstat``
    calls, on the daemon's start path)."""
    head, name = os.path.split(path)  # not normalised: ".." after a link is the link target's parent
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        link = True  # missing or unreadable: resolved (and then reported) as before
    if link or name in ("", ".", ".."):
        return str(Path(path).resolve())
    real = dirs.get(head)
    if real is None:
        real = dirs[head] = str(Path(head or ".").resolve())
    return os.path.join(real, name)


class IntegrityMonitor:
    """Baseline-and-recheck of files; not thread-safe (one loop owns it)."""

    def __init__(
        self,
        files: Iterable[str | os.PathLike[str]] = (),
        modules: Iterable[str] = (),
        *,
        audit: AuditSink | None = None,
        resolved: Iterable[str] = (),
    ) -> None:
        """Take the baseline of ``files`` (each resolved here), of ``modules``' source files, and of
        ``resolved``: paths already resolved (:func:`resolved_package_files`), taken as they are."""
        self._audit = audit
        self._baseline: dict[str, tuple[str, int]] = {}
        self._module_files: dict[str, str] = {}
        self._reported: dict[str, Violation] = {}
        dirs: dict[str, str] = {}  # directory -> its resolved path, for this baseline only
        for f in files:
            p = _resolve(os.fspath(f), dirs)
            self._baseline[p] = _hash(p)
        for p in resolved:
            self._baseline[p] = _hash(p)
        for name in modules:
            self.add_module(name)

    @classmethod
    def from_baseline(cls, baseline: Baseline, *, audit: AuditSink | None = None) -> IntegrityMonitor:
        """A monitor of the files of a baseline another process took (:meth:`baseline`) by this class."""
        monitor = cls(audit=audit)
        monitor._baseline.update(baseline)
        return monitor

    def baseline(self) -> Baseline:
        """Each watched file's digest and size, as taken (a copy)."""
        return dict(self._baseline)

    def add(self, path: str | os.PathLike[str]) -> None:
        """Take the baseline of one file now (it must exist and be readable)."""
        p = str(Path(path).resolve())
        self._baseline[p] = _hash(p)

    def add_module(self, name: str) -> None:
        """Watch the source file of a loaded module, and that the module object keeps pointing at it."""
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if module is None or not file:
            raise ValueError(f"module {name!r} is not loaded or has no file")
        self._module_files[name] = str(Path(file).resolve())
        self.add(file)

    @property
    def watched(self) -> int:
        return len(self._baseline)

    def files(self) -> list[str]:
        """The resolved paths under watch, sorted."""
        return sorted(self._baseline)

    def check(self) -> list[Violation]:
        """Re-hash every watched file; return all current violations (audit only the new ones)."""
        found: list[Violation] = []
        for path, (digest, _size) in self._baseline.items():
            try:
                actual, _ = _hash(path)
            except FileNotFoundError:
                found.append(Violation(path=path, kind="missing", expected=digest))
                continue
            except OSError as exc:
                found.append(
                    Violation(path=path, kind="unreadable", expected=digest, actual=str(exc.strerror))
                )
                continue
            if actual != digest:
                found.append(Violation(path=path, kind="modified", expected=digest, actual=actual))
        for name, path in self._module_files.items():
            module = sys.modules.get(name)
            now = getattr(module, "__file__", None)
            if module is None or not now or str(Path(now).resolve()) != path:
                found.append(Violation(path=path, kind="module_replaced", expected=name, actual=str(now)))
        current = {v.path + "\0" + v.kind: v for v in found}
        if self._audit is not None:
            for key, v in current.items():
                if self._reported.get(key) != v:
                    self._audit.append(
                        "integrity.violation", path=v.path, kind=v.kind, expected=v.expected, actual=v.actual
                    )
        self._reported = current
        return found

    def rebaseline(self) -> None:
        """Accept the current state (after a deliberate upgrade): take every baseline again."""
        for path in list(self._baseline):
            self._baseline[path] = _hash(path)
        self._reported.clear()
