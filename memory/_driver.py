"""Which SQLite driver the memory store uses, and how sqlite-vec's ``vec0`` gets into its connections.

Routes, tried in this order; the first that passes :func:`_check` serves the process for its lifetime:

1. ``stdlib``: the stdlib ``sqlite3`` loads vec0 with ``enable_load_extension`` (python-build-standalone /
   uv Pythons and most distro Pythons are built with it).
2. ``stdlib-auto``: the stdlib ``sqlite3`` of a Python built without it (pyenv's default), when its
   ``_sqlite3`` links a SQLite that exports ``sqlite3_auto_extension``: vec0 is loaded with ctypes (it links
   no SQLite of its own; it calls SQLite through the routines table SQLite hands its entry point) and its
   entry point is registered with the very SQLite ``_sqlite3`` is bound to, never a second copy.
3. ``pysqlite3``: the ``pysqlite3`` package (``pip install 'openfang[sqlite]'``: pysqlite3-binary, which
   bundles its own SQLite 3.5x with extension loading).
4. none: :class:`MemoryStoreError` naming why each route failed and the extra that fixes it.

Each route is checked before it is chosen: SQLite at least :data:`MIN_SQLITE` (vec0 calls
``sqlite3_vtab_in*``, new in 3.38, and JSON is built in from 3.38), then on a ``:memory:`` connection vec0
loads and answers a KNN with ``IN`` on a partition key (what recall runs), FTS5 (keyword search), ``exp``
(math functions: recall's recency term) and ``json_extract`` (usage totals) work.

The gate (route 2). ``sqlite3_auto_extension`` acts on every connection the process opens afterwards, and
other modules open stdlib ``sqlite3`` connections in the same processes (the gateway's agent registry,
schedules, the audit log, an agent's ``sql_query`` database in a worker). vec0 must not reach those: its
``vec_npy_file`` reads files, which an agent's SQL must never do. So the registered entry point is a
ctypes callback that runs ``sqlite3_vec_init`` only while the opening thread is inside
:meth:`Driver.connect`; any other connection gets nothing but one Python call at open (microseconds).
It is registered once per process (a lock and a flag); a forked child inherits the registration and the
flag, and a spawned one registers its own.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import MemoryStoreError

if TYPE_CHECKING:
    import ctypes  # imported when route 2 is tried: the other routes and mere importers never pay for it

MIN_SQLITE = (3, 38, 0)
ROUTES = ("stdlib", "stdlib-auto", "pysqlite3")
# Forces one route (tests run each route through a writer process with it); unset: the first that works.
ROUTE_ENV = "OPENFANG_MEMORY_SQLITE_ROUTE"
FIX = "install the extra that brings a SQLite able to load it: pip install 'openfang[sqlite]'"


@functools.cache
def vec_extension_path() -> str:
    """The sqlite-vec loadable extension bundled with the ``sqlite_vec`` package, found without importing it.

    ``import sqlite_vec`` imports ``numpy.typing`` (~40 ms and ~7 MB of private pages per process) for a
    helper we do not use; the extension is the package's ``vec0`` file, which is all ``sqlite_vec.load``
    loads.
    """
    spec = importlib.util.find_spec("sqlite_vec")
    if spec is None or not spec.submodule_search_locations:
        raise MemoryStoreError("the sqlite-vec package is not installed (a dependency of the memory store)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "vec0")


@dataclass(frozen=True, slots=True)
class Driver:
    """One way to open memory connections: the DB-API module, its SQLite and how vec0 is loaded.

    Every sqlite exception class the memory store catches comes from :attr:`module` (``pysqlite3`` and the
    stdlib define distinct classes).
    """

    route: str
    module: ModuleType
    sqlite_version: str
    library: str  # the file SQLite lives in

    @property
    def Error(self) -> type[Exception]:
        return self.module.Error  # type: ignore[no-any-return]

    @property
    def DatabaseError(self) -> type[Exception]:
        return self.module.DatabaseError  # type: ignore[no-any-return]

    @property
    def IntegrityError(self) -> type[Exception]:
        return self.module.IntegrityError  # type: ignore[no-any-return]

    def summary(self) -> str:
        """Route and SQLite version, short enough for ``openfang status``."""
        return f"{self.route} (SQLite {self.sqlite_version})"

    def describe(self) -> str:
        """One line for logs and ``openfang memory stats``: route, SQLite version and where it lives."""
        return f"{self.route} (SQLite {self.sqlite_version}, {self.library})"

    def connect(self, target: str, **kwargs: Any) -> Any:
        """A connection to ``target`` (``sqlite3.connect`` arguments) with vec0 loaded."""
        if self.route == "stdlib-auto":
            return _gated_connect(self.module, target, kwargs)
        conn = self.module.connect(target, **kwargs)
        try:
            conn.enable_load_extension(True)
            try:
                conn.load_extension(vec_extension_path())
            finally:
                conn.enable_load_extension(False)
        except BaseException:
            conn.close()
            raise
        return conn


# -- route 2: the gated auto-extension ------------------------------------------------------------------


class _Gate(threading.local):
    active = False
    calls = 0  # entry point runs seen by this thread inside connect (0 after it: the registration is gone)


_gate = _Gate()
_register_lock = threading.Lock()
_registered: dict[str, Any] = {}  # "library" -> path; "vec" and "entry" keep the ctypes objects alive
registrations = 0  # how many times this process (with its fork parents) registered: must stay <= 1


def _reset_lock_in_child() -> None:
    global _register_lock
    _register_lock = threading.Lock()  # a thread of the parent may have held it at fork


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (from /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                lo, _, hi = parts[0].partition("-")
                if int(lo, 16) <= address < int(hi, 16):
                    return parts[5].strip() if len(parts) == 6 else None
    except OSError:
        return None
    return None


@functools.cache
def _stdlib_sqlite_library() -> tuple[ctypes.CDLL, str]:
    """The SQLite the stdlib ``_sqlite3`` is bound to: a ctypes handle and its file.

    ``dlsym`` on ``_sqlite3``'s own handle resolves ``sqlite3_auto_extension`` through that module's
    dependencies, so it is the copy ``_sqlite3`` calls; /proc/self/maps names the file that address lies in
    (``libsqlite3.so.0`` of the distro here), even when another SQLite (pysqlite3's) is loaded beside it.
    """
    import _sqlite3
    import ctypes

    module_file = getattr(_sqlite3, "__file__", None)
    if module_file is None:
        raise MemoryStoreError(
            "the stdlib _sqlite3 is built into the interpreter: no library to register with"
        )
    handle = ctypes.CDLL(module_file)
    try:
        entry = handle.sqlite3_auto_extension
    except AttributeError:
        raise MemoryStoreError(
            f"{module_file} exports no sqlite3_auto_extension (SQLite linked in statically, or hidden)"
        ) from None
    address = ctypes.cast(entry, ctypes.c_void_p).value
    library = _mapped_file(address or 0) if sys.platform.startswith("linux") else None
    if library is None:
        raise MemoryStoreError("cannot tell which file sqlite3_auto_extension lives in (no /proc/self/maps)")
    return handle, library


def _register() -> str:
    """Register the gated vec0 entry point with the stdlib's SQLite, once per process; returns its file."""
    global registrations
    import ctypes

    with _register_lock:
        if "library" in _registered:
            return str(_registered["library"])
        handle, library = _stdlib_sqlite_library()
        vec = ctypes.CDLL(vec_extension_path() + ".so")  # Linux only, like /proc/self/maps above
        vec_init = vec.sqlite3_vec_init
        vec_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        vec_init.restype = ctypes.c_int

        def entry(db: int | None, err: int | None, api: int | None) -> int:
            if not _gate.active:
                return 0  # not a memory connection: it gets nothing
            _gate.calls += 1
            return int(vec_init(db, err, api))

        entry_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        callback = entry_type(entry)
        auto = handle.sqlite3_auto_extension
        auto.argtypes = [entry_type]
        auto.restype = ctypes.c_int
        rc = auto(callback)
        if rc != 0:
            raise MemoryStoreError(f"{library}: sqlite3_auto_extension failed with code {rc}")
        _registered.update(library=library, vec=vec, entry=callback)
        registrations += 1
        return library


def _gated_connect(module: ModuleType, target: str, kwargs: dict[str, Any]) -> Any:
    _register()
    _gate.active, _gate.calls = True, 0
    try:
        conn = module.connect(target, **kwargs)
    finally:
        _gate.active = False
    if _gate.calls != 1:  # someone reset the process's auto-extensions after we registered
        conn.close()
        raise MemoryStoreError(
            f"vec0 was not loaded into {target} (the auto-extension is no longer registered)"
        )
    return conn


# -- choosing -------------------------------------------------------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3])


def _candidate(route: str) -> Driver:
    """The driver of ``route`` if this interpreter has what it needs (not yet checked); else raises."""
    if route == "pysqlite3":
        try:
            module = importlib.import_module("pysqlite3.dbapi2")
        except ImportError:
            raise MemoryStoreError("the pysqlite3 package is not installed") from None
        pkg = sys.modules["pysqlite3"]
        return Driver(
            route, module, module.sqlite_version, f"bundled with {os.path.dirname(pkg.__file__ or '')}"
        )
    import sqlite3

    if route == "stdlib":
        if not hasattr(sqlite3.Connection, "enable_load_extension"):
            raise MemoryStoreError(
                f"the stdlib sqlite3 of {sys.executable} was built without enable_load_extension"
            )
        try:
            library = _stdlib_sqlite_library()[1]
        except MemoryStoreError:  # SQLite linked into _sqlite3 itself
            import _sqlite3

            library = getattr(_sqlite3, "__file__", "built into the interpreter")
        return Driver(route, sqlite3, sqlite3.sqlite_version, library)
    if route == "stdlib-auto":
        return Driver(route, sqlite3, sqlite3.sqlite_version, _stdlib_sqlite_library()[1])
    raise MemoryStoreError(f"unknown SQLite route {route!r} (one of {', '.join(ROUTES)})")


_KNN_PROBE = (
    "CREATE VIRTUAL TABLE temp.probe_vec USING vec0(a TEXT PARTITION KEY, e FLOAT[2] distance_metric=cosine)",
    "INSERT INTO temp.probe_vec(rowid, a, e) VALUES (1, 'x', '[1, 0]'), (2, 'y', '[0, 1]')",
)


def _check(drv: Driver, min_version: tuple[int, ...]) -> None:
    """Raise unless ``drv``'s SQLite is new enough and has every feature the memory store uses."""
    found = _version(drv.sqlite_version)
    if found < min_version:
        need = ".".join(map(str, min_version))
        raise MemoryStoreError(
            f"SQLite {drv.sqlite_version} is too old: the memory store needs {need} or newer "
            "(vec0 calls sqlite3_vtab_in, new in 3.38; JSON functions built in)"
        )
    conn = drv.connect(":memory:")
    try:
        for feature, sql in (
            ("sqlite-vec (vec0 KNN with IN on a partition key)", None),
            ("FTS5", "CREATE VIRTUAL TABLE temp.probe_fts USING fts5(t)"),
            ("math functions (exp)", "SELECT exp(0.0)"),
            ("JSON functions", "SELECT json_extract('{\"a\": 1}', '$.a')"),
        ):
            try:
                if sql is None:
                    for statement in _KNN_PROBE:
                        conn.execute(statement)
                    rows = conn.execute(
                        "SELECT rowid FROM temp.probe_vec "
                        "WHERE e MATCH '[1, 0.1]' AND k = 1 AND a IN ('x', 'y')"
                    ).fetchall()
                    if [r[0] for r in rows] != [1, 2]:  # IN on a partition key: k rows per partition
                        raise MemoryStoreError(f"KNN probe answered {rows}, expected rowids [1, 2]")
                else:
                    conn.execute(sql).fetchall()
            except drv.Error as exc:
                raise MemoryStoreError(f"SQLite {drv.sqlite_version} lacks {feature}: {exc}") from None
    finally:
        conn.close()


def select(route: str | None = None, *, min_version: tuple[int, ...] = MIN_SQLITE) -> Driver:
    """The driver of ``route``, or of the first route (in :data:`ROUTES` order) that passes the checks.

    Raises :class:`MemoryStoreError` naming every route tried, why it failed, and the fix.
    """
    routes = [route] if route else route_order()
    failures = []
    for name in routes:
        try:
            drv = _candidate(name)
            _check(drv, min_version)
        except MemoryStoreError as exc:
            failures.append(f"{name}: {exc.message}")
            continue
        except Exception as exc:  # a driver error out of connect (e.g. vec0 refused to load)
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return drv
    raise MemoryStoreError(
        "no SQLite driver can run the memory store (it needs sqlite-vec's vec0, FTS5, JSON and math "
        f"functions): {'; '.join(failures)}. To fix: {FIX}"
    )


def route_order(stdlib_module: Any = None) -> list[str]:
    """Routes worth trying here, best first: the stdlib loads vec0 itself when it can, else through the
    auto-extension (the same SQLite either way, so never both), then pysqlite3."""
    if stdlib_module is None:
        import sqlite3 as stdlib_module
    if hasattr(stdlib_module.Connection, "enable_load_extension"):
        return ["stdlib", "pysqlite3"]
    return ["stdlib-auto", "pysqlite3"]


@functools.cache
def driver() -> Driver:
    """This process's driver, chosen on first use (``$OPENFANG_MEMORY_SQLITE_ROUTE`` forces one)."""
    return select(os.environ.get(ROUTE_ENV) or None)
