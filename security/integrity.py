"""Layer 14, runtime integrity: re-hash the daemon's own files and loaded modules, report any change.

:class:`IntegrityMonitor` takes a baseline (SHA-256, size) of registered files at construction — the
package files of OpenFANG itself (:func:`package_files`), the source files of loaded modules by module name,
and anything else the daemon relies on (guest modules, config). The daemon's loop calls :meth:`check`
periodically; it re-hashes *everything* (content, not mtime: an attacker can restore an mtime) and returns a
:class:`Violation` per changed, missing or replaced file. A violation is audited once when it appears (and
again if it changes), not on every tick, so a loop calling ``check`` each second does not flood the log.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openfang.security._hashing import sha256_stream
from openfang.security.audit import AuditSink

ViolationKind = Literal["modified", "missing", "unreadable", "module_replaced"]
Baseline = dict[str, tuple[str, int]]  # resolved path -> (SHA-256 hex digest, size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """One integrity failure: which file, what happened, the expected and actual digests."""

    path: str
    kind: ViolationKind
    expected: str
    actual: str = ""


def _hash(path: Path) -> tuple[str, int]:
    h = sha256_stream()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


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
    ) -> None:
        self._audit = audit
        self._baseline: dict[str, tuple[str, int]] = {}
        self._module_files: dict[str, str] = {}
        self._reported: dict[str, Violation] = {}
        dirs: dict[str, str] = {}  # directory -> its resolved path, for this baseline only
        for f in files:
            p = _resolve(os.fspath(f), dirs)
            self._baseline[p] = _hash(Path(p))
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
        p = Path(path).resolve()
        self._baseline[str(p)] = _hash(p)

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
            p = Path(path)
            try:
                actual, _ = _hash(p)
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
            self._baseline[path] = _hash(Path(path))
        self._reported.clear()
