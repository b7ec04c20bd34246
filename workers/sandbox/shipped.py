"""The built-in guests compiled at install time: ``python -m openfang.workers.sandbox.shipped [FOLDER]``.

A worker compiles a module the first time a data dir sees it (~5 ms for ``builtin:llm-agent``, on a fresh
data dir's first spawn, in the cold start); the modules written here, one ``.cwasm`` per built-in guest for
the engine of the default stack size, are mapped instead (see ``_module_cache.ShippedModules`` for what is
checked before one is loaded). ``make install`` runs this after installing the package; the folder
(:func:`default_folder`, ``<prefix>/share/openfang/modules``) is made 0755 and its files 0644 (the workers'
user reads them), owned by whoever installs. A file is written whole and renamed into place, so a worker
starting meanwhile sees the old file or the new one. Anything left from another wasmtime version or engine
setting has another name and is removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from openfang.workers.sandbox._module_cache import write_artifact
from openfang.workers.sandbox._wasmtime import Runtime
from openfang.workers.sandbox.builtin_guests import BUILTINS, builtin_digest, builtin_source


def default_folder() -> Path:
    """Where the installed package's compiled built-in guests are: ``<sys.prefix>/share/openfang/modules``."""
    return Path(sys.prefix) / "share" / "openfang" / "modules"


def ship(folder: Path) -> list[Path]:
    """Compile every built-in guest into ``folder`` (made 0755 if missing); the files written. Files of
    other engines (names that are not this engine's) are removed."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    folder.chmod(0o755)
    runtime = Runtime(())
    try:
        engine = runtime.fingerprint()
        wanted: list[Path] = []
        for name in sorted(BUILTINS):
            # Compiled as a worker's Runtime.compile does (no cache: always compiled here).
            module, _ = runtime.compile(
                builtin_source(name), digest=builtin_digest(name), what=f"builtin:{name}"
            )
            artifact = bytes(module.serialize())
            module.close()
            path = folder / f"{builtin_digest(name)}-{engine}.cwasm"
            if not write_artifact(path, artifact, mode=0o644):
                raise OSError(f"cannot write {path}")
            path.chmod(0o644)  # whatever the umask: the workers' user reads it
            wanted.append(path)
        for stale in folder.glob("*.cwasm"):
            if stale not in wanted:
                stale.unlink()
        return wanted
    finally:
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m openfang.workers.sandbox.shipped [FOLDER]", file=sys.stderr)
        return 2
    folder = Path(args[0]) if args else default_folder()
    try:
        written = ship(folder)
    except OSError as exc:
        print(f"openfang: cannot write the compiled built-in guests to {folder}: {exc}", file=sys.stderr)
        return 1
    print(f"compiled {len(written)} built-in guests into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
