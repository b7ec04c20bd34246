"""The command line every generator of a checked-in file shares: ``--write`` rewrites the file from its
source of truth, ``--check`` exits 1 (naming the fix) when the file is not what ``--write`` would make.

The generated files and their generators: ``_precompiled_data.py`` (:mod:`openfang._precompiled_gen`),
``workers/tools/_index.py`` (:mod:`openfang.workers.tools._index_gen`), ``security/_injection_table.py``
(:mod:`openfang.security._injection_table_gen`). ``make generate`` runs them all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def generator_main(
    doc: str | None, target: Path, render: Callable[[], str], command: str, argv: list[str] | None = None
) -> int:
    """Run a generator's command line for ``target``, whose text ``render`` makes; ``command`` is how to
    run it (named in the stale message)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"rewrite {target.name}")
    mode.add_argument("--check", action="store_true", help="exit 1 if it is not what --write makes")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        target.write_text(text)
        return 0
    if target.read_text() != text:
        print(f"{target} is stale: run {command} --write (or make generate)", file=sys.stderr)
        return 1
    return 0
