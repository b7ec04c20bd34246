"""Where this cluster's memory lives (the writer's endpoint and the database), with nothing else imported.

A worker asks this at start to learn whether the cluster has memory at all (no database: no memory child),
so it must not cost the memory client's imports when the answer is no.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from openfang.protocol.errors import ConfigError, Problem


def locations(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(writer endpoint, database path) for this cluster, as every process computes them.

    ``OPENFANG_MEMORY_ENDPOINT`` / ``OPENFANG_MEMORY_DB`` if set, else under ``OPENFANG_DATA_DIR`` (which the
    daemon gives every child): ``ipc://<data_dir>/run/memory.sock`` and ``<data_dir>/memory.db``.
    """
    env = os.environ if env is None else env
    data_dir = env.get("OPENFANG_DATA_DIR", "")
    endpoint = env.get("OPENFANG_MEMORY_ENDPOINT") or (
        f"ipc://{data_dir}/run/memory.sock" if data_dir else ""
    )
    db_path = env.get("OPENFANG_MEMORY_DB") or (os.path.join(data_dir, "memory.db") if data_dir else "")
    if not endpoint or not db_path:
        raise ConfigError(
            Problem("env.OPENFANG_DATA_DIR", "not set: cannot locate the memory writer and database")
        )
    return endpoint, db_path
