"""Opening the database: the sqlite-vec extension loads without importing the sqlite_vec package (numpy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK_IMPORTS = r"""
import sys
import openfang.memory.api, openfang.memory.reader, openfang.memory.service, openfang.memory.client
heavy = [m for m in ("sqlite_vec", "numpy", "urllib.request") if m in sys.modules]
print(",".join(heavy))
"""

CHECK_WRITER_IMPORTS = r"""
import sys
import openfang.memory.writer, openfang.memory.schema
print(",".join(m for m in ("sqlite_utils", "numpy", "sqlite_vec") if m in sys.modules))
"""

CHECK_VEC = r"""
import sys
from openfang.memory import _db
conn = _db.open_writer(sys.argv[1])
print(conn.execute("select vec_version()").fetchone()[0])
print("sqlite_vec" in sys.modules, "numpy" in sys.modules)
"""


def test_db_memory_api_imports_neither_sqlite_vec_nor_numpy_nor_urllib() -> None:
    """Importing the memory API (as every worker does) loads no sqlite_vec/numpy or urllib.request: those
    are for the remote embedder."""
    out = subprocess.run([sys.executable, "-c", CHECK_IMPORTS], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_db_vec_extension_loads_from_the_package_file(tmp_path: Path) -> None:
    """A connection has sqlite-vec's functions, loaded from the package's vec0 file, not via its module."""
    db = tmp_path / "m.db"
    out = subprocess.run(
        [sys.executable, "-c", CHECK_VEC, str(db)], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0].startswith("v")  # e.g. v0.1.9
    assert out[1] == "False False"


def test_db_writer_start_imports_neither_sqlite_utils_nor_numpy() -> None:
    """The memory writer's modules (its start and migrations) import neither sqlite_utils nor numpy, even
    where numpy is installed (sqlite-utils imported numpy whenever it could)."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK_WRITER_IMPORTS], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
