"""The memory store's SQLite driver: each route, its checks, the auto-extension gate, the no-route error."""

from __future__ import annotations

import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import threading
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest
from memory_testkit import ENV

from openfang.memory import _db, _driver
from openfang.memory.client import MemoryClient
from openfang.memory.reader import MemoryReader
from openfang.protocol.errors import MemoryStoreError

ROUTES_HERE = _driver.route_order()
DIM = 8


def _auto_extension_here() -> bool:
    try:
        _driver.select("stdlib-auto")
    except MemoryStoreError:
        return False
    return True


# Route 2 needs a _sqlite3 linked to a shared libsqlite3 (this machine's pyenv CPython and Debian's are).
needs_auto = pytest.mark.skipif(not _auto_extension_here(), reason="_sqlite3 links no shared libsqlite3 here")


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _vectors(n: int, seed: int) -> list[list[float]]:
    rnd = random.Random(seed)
    return [_unit([rnd.uniform(-1, 1) for _ in range(DIM)]) for _ in range(n)]


def _cosine_top(query: list[float], rows: dict[int, list[float]], k: int) -> list[int]:
    return sorted(rows, key=lambda i: (-sum(a * b for a, b in zip(query, rows[i], strict=True)), i))[:k]


def test_driver_route_order_prefers_the_stdlib_loader_then_the_auto_extension_then_pysqlite3() -> None:
    """With enable_load_extension the stdlib loads vec0 itself; without it the auto-extension route comes
    first; pysqlite3 is always the last resort, and this interpreter gets the order its sqlite3 implies."""

    class Loads:
        def enable_load_extension(self, on: bool) -> None: ...

    with_loader = SimpleNamespace(Connection=Loads)
    without = SimpleNamespace(Connection=object)
    assert _driver.route_order(with_loader) == ["stdlib", "pysqlite3"]
    assert _driver.route_order(without) == ["stdlib-auto", "pysqlite3"]
    has = hasattr(sqlite3.Connection, "enable_load_extension")
    assert _driver.route_order() == (["stdlib", "pysqlite3"] if has else ["stdlib-auto", "pysqlite3"])
    if not has:
        with pytest.raises(MemoryStoreError, match="built without enable_load_extension"):
            _driver.select("stdlib")


def test_driver_chosen_is_the_first_route_that_passes_its_checks() -> None:
    """select() with no route returns the first of route_order() that works here, a stdlib one when the
    stdlib's SQLite can get vec0 (so pysqlite3 is not needed)."""
    first = None
    for route in _driver.route_order():
        try:
            _driver.select(route)
        except MemoryStoreError:
            continue
        first = route
        break
    assert first is not None
    assert _driver.select().route == first
    if _driver.route_order()[0] == "stdlib-auto" and _auto_extension_here():
        assert first == "stdlib-auto"


@needs_auto
def test_driver_stdlib_auto_registers_with_the_sqlite_library_sqlite3_is_linked_to() -> None:
    """Route 2 registers with the libsqlite3 the stdlib _sqlite3 links (ldd names it), same version."""
    drv = _driver.select("stdlib-auto")
    import _sqlite3

    ldd = subprocess.run(["ldd", _sqlite3.__file__], capture_output=True, text=True, check=True).stdout
    linked = [line.split("=>")[1].split()[0] for line in ldd.splitlines() if "libsqlite3" in line]
    assert [os.path.realpath(p) for p in linked] == [os.path.realpath(drv.library)]
    assert drv.sqlite_version == sqlite3.sqlite_version


CHECK_WITH_PYSQLITE3_LOADED = r"""
import pysqlite3.dbapi2 as p  # first: its own SQLite (3.5x), linked into its module, exports sqlite3_*
from openfang.memory import _driver
drv = _driver.select("stdlib-auto")
conn = drv.connect(":memory:")
print(p.sqlite_version, drv.library, *conn.execute("select sqlite_version(), vec_version()").fetchone())
"""


@needs_auto
def test_driver_stdlib_auto_picks_the_stdlib_sqlite_even_beside_pysqlite3s_copy() -> None:
    """With pysqlite3's SQLite also in the process, route 2 registers with (and reports) the stdlib's."""
    import _sqlite3

    out = subprocess.run(
        [sys.executable, "-c", CHECK_WITH_PYSQLITE3_LOADED],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout.split()
    other, library, version, vec = out
    assert other != sqlite3.sqlite_version  # two different SQLite copies in that process
    assert "pysqlite3" not in library and library == _driver.select("stdlib-auto").library
    assert library != _sqlite3.__file__
    assert (version, vec) == (sqlite3.sqlite_version, "v0.1.9")


@pytest.mark.parametrize("route", ROUTES_HERE)
def test_driver_vec0_knn_insert_delete_on_each_route(route: str, tmp_path: Path) -> None:
    """vec0 as the memory store lays it out (partition key, metadata, cosine, chunk 64) answers exact KNN
    per agent on this route, forgets deleted rows, and answers on a read-only connection too."""
    drv = _driver.select(route)
    db = str(tmp_path / "v.db")
    rows = dict(enumerate(_vectors(120, seed=7), start=1))
    owner = {i: ("a" if i % 3 else "b") for i in rows}
    with closing(drv.connect(db, isolation_level=None)) as conn:
        conn.execute(
            "CREATE VIRTUAL TABLE v USING vec0(agent_id TEXT PARTITION KEY, kind TEXT, created FLOAT, "
            f"embedding FLOAT[{DIM}] distance_metric=cosine, chunk_size=64)"
        )
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO v(rowid, agent_id, kind, created, embedding) VALUES (?, ?, 'fact', ?, ?)",
            [(i, owner[i], float(i), _db.pack_vector(vec)) for i, vec in rows.items()],
        )
        conn.execute("COMMIT")
        query = _vectors(1, seed=99)[0]
        knn = "SELECT rowid FROM v WHERE embedding MATCH ? AND k = 10 AND agent_id IN (?) ORDER BY distance"
        mine = {i: v for i, v in rows.items() if owner[i] == "a"}
        got = [r[0] for r in conn.execute(knn, (_db.pack_vector(query), "a"))]
        assert got == _cosine_top(query, mine, 10)
        for gone in got[:3]:
            conn.execute("DELETE FROM v WHERE rowid = ?", (gone,))
            del mine[gone]
        got = [r[0] for r in conn.execute(knn, (_db.pack_vector(query), "a"))]
        assert got == _cosine_top(query, mine, 10)
        assert conn.execute("SELECT count(*) FROM v").fetchone()[0] == 117
    with closing(drv.connect(f"file:{db}?mode=ro", uri=True)) as ro:
        got = [r[0] for r in ro.execute(knn, (_db.pack_vector(query), "a"))]
        assert got == _cosine_top(query, mine, 10)


@needs_auto
def test_driver_gate_gives_vec0_only_to_memory_connections() -> None:
    """After route 2 registered, a plain stdlib connection (another module's, or an agent's sql_query
    database) has neither vec0's functions nor its module, in this thread or another."""
    drv = _driver.select("stdlib-auto")
    with closing(drv.connect(":memory:")) as mem:
        assert mem.execute("SELECT vec_version()").fetchone()[0].startswith("v")
    errors: list[str] = []

    def plain() -> None:
        with closing(sqlite3.connect(":memory:")) as other:
            for sql in ("SELECT vec_version()", "CREATE VIRTUAL TABLE t USING vec0(e FLOAT[2])"):
                try:
                    other.execute(sql)
                    errors.append(f"{sql} worked")
                except sqlite3.OperationalError as exc:
                    errors.append(str(exc))

    plain()
    t = threading.Thread(target=plain)
    t.start()
    t.join()
    assert errors == ["no such function: vec_version", "no such module: vec0"] * 2


@needs_auto
def test_driver_registers_once_per_process_and_a_forked_child_inherits_it() -> None:
    """Many selects and connects register the entry point once; a forked child opens memory connections
    with vec0 through the inherited registration, without registering again."""
    drv = _driver.select("stdlib-auto")
    for _ in range(3):
        _driver.select("stdlib-auto").connect(":memory:").close()
    assert _driver.registrations == 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any of pytest's cleanup
        code = 1
        try:
            os.close(r)
            with closing(drv.connect(":memory:")) as conn:
                line = f"{conn.execute('SELECT vec_version()').fetchone()[0]} {_driver.registrations}"
            os.write(w, line.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as pipe:
        said = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == "v0.1.9 1"


@needs_auto
def test_driver_refuses_a_too_old_sqlite_naming_the_version_found_and_needed() -> None:
    """A SQLite older than the minimum is refused before vec0 is loaded, naming both versions."""
    with pytest.raises(MemoryStoreError) as info:
        _driver.select("stdlib-auto", min_version=(3, 99, 0))
    assert f"SQLite {sqlite3.sqlite_version} is too old" in info.value.message
    assert "needs 3.99.0 or newer" in info.value.message
    assert tuple(int(p) for p in sqlite3.sqlite_version.split(".")) >= _driver.MIN_SQLITE


def test_driver_no_working_route_names_each_route_and_the_extra() -> None:
    """When no route passes, the error lists every route with its reason and says which extra fixes it."""
    with pytest.raises(MemoryStoreError) as info:
        _driver.select(min_version=(99, 0, 0))
    text = info.value.message
    for route in _driver.route_order():
        assert f"{route}: SQLite" in text
    assert "pip install 'openfang[sqlite]'" in text


WITHOUT_PYSQLITE3 = r"""
import sys
sys.modules["pysqlite3"] = None  # as on a machine without the openfang[sqlite] extra
from openfang.memory import _db
from openfang.protocol.errors import MemoryStoreError
try:
    _db.open_writer(sys.argv[1])
except MemoryStoreError as exc:
    print(exc.message)
"""


def test_driver_forced_pysqlite3_route_without_the_package_says_what_is_missing(tmp_path: Path) -> None:
    """Opening the store on the pysqlite3 route without pysqlite3 installed fails with a MemoryStoreError
    naming the missing package and the extra, and creates no database."""
    env = {**ENV, _driver.ROUTE_ENV: "pysqlite3"}
    db = tmp_path / "m.db"
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYSQLITE3, str(db)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "pysqlite3: the pysqlite3 package is not installed" in out
    assert "pip install 'openfang[sqlite]'" in out
    assert not db.exists()


@pytest.mark.parametrize("route", ROUTES_HERE)
def test_driver_error_classes_come_from_the_chosen_driver(route: str) -> None:
    """A constraint failure raises the chosen driver's IntegrityError (a DatabaseError of that driver);
    pysqlite3's classes are not the stdlib's, so memory catches through the driver."""
    drv = _driver.select(route)
    with closing(drv.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES ('x')")
        with pytest.raises(drv.IntegrityError) as info:
            conn.execute("INSERT INTO t VALUES ('x')")
    assert isinstance(info.value, drv.DatabaseError)
    assert isinstance(info.value, sqlite3.IntegrityError) == (drv.module is sqlite3)


@pytest.mark.integration
@pytest.mark.parametrize("route", ROUTES_HERE)
def test_driver_writer_on_each_route_keeps_acked_vectors_across_kill9(
    route: str, writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer process on the route (its start log names it) stores memories with vectors, is killed -9,
    and the next one keeps every acked row: the reader's KNN (default route) finds them in exact order."""
    monkeypatch.setenv(_driver.ROUTE_ENV, route)
    w = writer()
    vecs = _vectors(40, seed=3)
    ids = []
    with MemoryClient(w.endpoint) as c:
        for i, vec in enumerate(vecs[:20]):
            ack = c.store("a", f"fact {i}", embedder="t8", vector=_db.pack_vector(vec))
            ids.append(ack["id"])
        w.kill9()
        w.restart()
        for i, vec in enumerate(vecs[20:], start=20):
            ack = c.store("a", f"fact {i}", embedder="t8", vector=_db.pack_vector(vec))
            ids.append(ack["id"])
        seq = int(ack["seq"])
    assert f"{route} (SQLite " in w.log_text()
    query = _vectors(1, seed=5)[0]
    with MemoryReader(w.db) as r:
        r.wait_for(seq)
        hits = r.recall(scope=None, agent_id="a", vector=_db.pack_vector(query), embedder_id="t8", k=5)
    expected = _cosine_top(query, dict(zip(ids, vecs, strict=True)), 5)
    assert [h.id for h in hits] == expected


def _interpreter_with_load_extension() -> str | None:
    """Another CPython of our version whose stdlib sqlite3 has enable_load_extension (a distro build)."""
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{here}", f"/usr/local/bin/{here}", shutil.which(here)):
        if not candidate or not os.path.exists(candidate) or os.path.samefile(candidate, sys.executable):
            continue
        probe = (
            "import sqlite3, sys; "
            "print(hasattr(sqlite3.Connection, 'enable_load_extension'), sys.version_info[:2])"
        )
        done = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == f"True {tuple(sys.version_info[:2])}":
            return candidate
    return None


ROUTE1 = r"""
import site, sys
before = list(sys.path)
site.addsitedir(sys.argv[1])  # our venv's packages (same CPython minor version, same ABI), ahead of the
sys.path[:] = [p for p in sys.path if p not in before] + before  # distro's own dist-packages
from openfang.memory import _driver, _db, schema
schema.migrate(sys.argv[2])
conn = _db.open_reader(sys.argv[2])
print(_driver.driver().route, conn.execute("select vec_version()").fetchone()[0])
"""


def test_driver_stdlib_route_on_a_python_built_with_enable_load_extension(tmp_path: Path) -> None:
    """On a Python whose sqlite3 can load extensions (the distro's here), route 1 is chosen and opens a
    migrated store with vec0."""
    if "stdlib" in _driver.route_order():
        python = sys.executable
    else:
        found = _interpreter_with_load_extension()
        if found is None:
            pytest.skip("no Python of this version with enable_load_extension on this machine")
        python = found
    site_packages = sysconfig.get_paths()["purelib"]
    out = subprocess.run(
        [python, "-c", ROUTE1, site_packages, str(tmp_path / "m.db")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert out.split() == ["stdlib", "v0.1.9"]


def test_driver_connections_keep_temp_data_in_memory_and_the_reader_maps_the_file(tmp_path: Path) -> None:
    """Whatever the SQLite's build default, the writer and reader keep savepoint journals and sorts in
    memory (temp_store 2), and the reader memory-maps the file for KNN's chunk reads."""
    db = tmp_path / "m.db"
    with closing(_db.open_writer(db)) as w:
        assert w.execute("PRAGMA temp_store").fetchone()[0] == 2
        with closing(_db.open_reader(db)) as r:
            assert r.execute("PRAGMA temp_store").fetchone()[0] == 2
            assert r.execute("PRAGMA mmap_size").fetchone()[0] == _db.READER_MMAP_BYTES


READONLY_WRITE = r"""
import sys
from openfang.memory import _db, schema
from openfang.memory.reader import MemoryReader
from openfang.protocol.errors import MemoryStoreError
schema.migrate(sys.argv[1])
try:
    with MemoryReader(sys.argv[1]) as r, r.snapshot() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', 1)")
except MemoryStoreError as exc:
    print(_db.driver().route, "|", exc.message)
"""


@pytest.mark.parametrize("route", ROUTES_HERE)
def test_driver_reader_translates_the_chosen_drivers_errors_on_each_route(route: str, tmp_path: Path) -> None:
    """On each route, a failing statement in a reader snapshot becomes a MemoryStoreError (memory catches
    the chosen driver's DatabaseError; catching the stdlib's would let pysqlite3's escape raw)."""
    env = {**ENV, _driver.ROUTE_ENV: route}
    db = tmp_path / "m.db"
    out = subprocess.run(
        [sys.executable, "-c", READONLY_WRITE, str(db)], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.startswith(f"{route} | ") and "query failed: attempt to write a readonly database" in out
