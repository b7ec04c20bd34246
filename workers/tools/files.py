"""File tools beyond read/write/list, all inside the agent's scoped root: glob, grep, patch, delete, move, and
archive list/extract.

Every path goes through :class:`~openfang.security.fs_scope.ScopedFS` (relative only, no ``..``, no
symlinks followed). Archives are read from a scoped file and extracted member by member through the same
checks, so an entry named ``../../etc/cron.d/x`` or ``/abs`` is refused (zip-slip), links and devices are
refused, and the bytes actually written are counted against caps on members, per-file size, total size and
compression ratio (a zip bomb stops when it crosses a cap, whatever its headers claim).
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import regex

from openfang.protocol.errors import SecurityError
from openfang.security.fs_scope import ScopedFS
from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_FILE = 1 << 20
MAX_ARCHIVE = 64 << 20
MAX_MEMBERS = 10_000
MAX_EXTRACT_FILE = 16 << 20
MAX_EXTRACT_TOTAL = 64 << 20
MAX_RATIO = 200  # uncompressed / compressed bytes of the whole archive
REGEX_TIMEOUT_S = 1.0


def _fs(ctx: ToolContext, max_write: int = MAX_FILE) -> ScopedFS:
    if ctx.fs_root is None:
        raise ToolError(
            "file access is not available in this host (the agent has no fs root)", code="unavailable"
        )
    return ScopedFS(
        ctx.fs_root, max_read_bytes=MAX_ARCHIVE, max_write_bytes=max_write, max_entries=MAX_MEMBERS
    )


_PATH = {"type": "string", "minLength": 1, "maxLength": 1024}


# ---- glob / grep ---------------------------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over '/'-separated paths: ``*`` and ``?`` stay in one component, ``**/`` spans any
    number of directories, ``[abc]`` is a class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def fs_glob(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    rx = glob_regex(args["pattern"])
    fs = _fs(ctx)
    base = "/".join(fs.parts(args["path"]))
    skip = len(base) + 1 if base else 0  # the pattern is relative to `path`
    hits = [
        {"path": p, "kind": e.kind, "size": e.size} for p, e in fs.walk(args["path"]) if rx.match(p[skip:])
    ]
    limit = args["limit"]
    return {"matches": hits[:limit], "count": len(hits), "truncated": len(hits) > limit}


def fs_grep(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        rx = regex.compile(args["pattern"], regex.IGNORECASE if args["ignore_case"] else 0)
    except (regex.error, ValueError) as exc:
        raise ToolError(f"invalid regex {args['pattern']!r}: {exc}", code="bad_args") from None
    names = glob_regex(args["glob"])
    fs = _fs(ctx)
    matches: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path, entry in fs.walk(args["path"]):
        if entry.kind != "file" or not names.match(path.rsplit("/", 1)[-1]):
            continue
        if entry.size > MAX_FILE:
            skipped.append(path)
            continue
        data = fs.read(path, max_bytes=MAX_FILE)
        if b"\x00" in data[:8192]:
            continue  # binary
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            try:
                found = rx.search(line, timeout=REGEX_TIMEOUT_S)
            except TimeoutError:
                raise ToolError(
                    f"regex gave up after {REGEX_TIMEOUT_S:g}s on {path}:{lineno}", code="timeout"
                ) from None
            if found:
                matches.append({"path": path, "line": lineno, "text": line[:500]})
                if len(matches) >= args["max_matches"]:
                    return {"matches": matches, "truncated": True, "skipped_large": skipped}
    return {"matches": matches, "truncated": False, "skipped_large": skipped}


# ---- patch ----------------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(slots=True)
class _FilePatch:
    old: str | None
    new: str | None
    hunks: list[tuple[int, list[str]]]


def _strip(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    return name[2:] if name.startswith(("a/", "b/")) else name


def parse_unified_diff(text: str) -> list[_FilePatch]:
    """Parse a unified diff (one or more files) into hunks; ToolError naming the line when malformed."""
    lines = text.splitlines()
    patches: list[_FilePatch] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("--- "):
            i += 1
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise ToolError(f"diff line {i + 2}: expected '+++ ' after '--- '", code="bad_args")
        fp = _FilePatch(_strip(lines[i][4:]), _strip(lines[i + 1][4:]), [])
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK.match(lines[i])
            if m is None:
                raise ToolError(f"diff line {i + 1}: bad hunk header {lines[i]!r}", code="bad_args")
            old_len = int(m.group(2) or 1)
            new_len = int(m.group(4) or 1)
            body: list[str] = []
            i += 1
            seen_old = seen_new = 0
            while i < len(lines) and (seen_old < old_len or seen_new < new_len):
                line = lines[i]
                if line.startswith("\\"):
                    i += 1
                    continue
                tag = line[:1] or " "
                if tag not in " +-":
                    raise ToolError(f"diff line {i + 1}: unexpected {line!r} inside a hunk", code="bad_args")
                seen_old += tag in " -"
                seen_new += tag in " +"
                body.append(tag + line[1:])
                i += 1
            if (seen_old, seen_new) != (old_len, new_len):
                raise ToolError(f"diff hunk at line {i}: is shorter than its header says", code="bad_args")
            while i < len(lines) and lines[i].startswith("\\"):
                i += 1
            fp.hunks.append((int(m.group(1)), body))
        patches.append(fp)
    if not patches:
        raise ToolError("no file headers ('--- a/x' / '+++ b/x') found in the diff", code="bad_args")
    return patches


def apply_hunks(original: list[str], hunks: list[tuple[int, list[str]]], path: str) -> list[str]:
    """Apply hunks to ``original`` lines; every context and removed line must match exactly (a hunk may
    have moved by a few lines: it is searched near its stated place)."""
    out: list[str] = []
    pos = 0
    for n, (start, body) in enumerate(hunks, 1):
        expect = [b[1:] for b in body if b[0] in " -"]
        want = max(start - 1, 0) if expect else start
        at = next(
            (
                p
                for d in range(0, 50)
                for p in (want + d, want - d)
                if p >= pos and original[p : p + len(expect)] == expect
            ),
            None,
        )
        if at is None:
            raise ToolError(f"{path}: hunk {n} (line {start}) does not match the file", code="conflict")
        out.extend(original[pos:at])
        out.extend(b[1:] for b in body if b[0] in " +")
        pos = at + len(expect)
    out.extend(original[pos:])
    return out


def fs_patch(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    fs = _fs(ctx)
    results: list[tuple[str | None, str | None, str | None]] = []
    for fp in parse_unified_diff(args["diff"]):
        target = fp.new or fp.old
        if target is None:
            raise ToolError("a file patch names /dev/null on both sides", code="bad_args")
        fs.parts(target)  # policy check before anything is read
        if fp.old is None:
            if fs.exists(target):
                raise ToolError(f"{target}: the diff creates it, but it exists", code="conflict")
            original: list[str] = []
        else:
            original = fs.read(fp.old, max_bytes=MAX_FILE).decode().splitlines()
        patched = apply_hunks(original, fp.hunks, target)
        results.append((fp.old, fp.new, "\n".join(patched) + "\n" if patched else ""))
    if args["dry_run"]:
        return {"files": [new or old for old, new, _ in results], "applied": False}
    for old, new, content in results:  # every hunk matched: now write
        if new is None and old is not None:
            fs.delete(old)
        elif new is not None:
            fs.write(new, content or "")
            if old is not None and old != new:
                fs.delete(old)
    return {"files": [new or old for old, new, _ in results], "applied": True}


# ---- delete / move --------------------------------------------------------------------------------------


def fs_delete(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"path": args["path"], "removed": _fs(ctx).delete(args["path"], recursive=args["recursive"])}


def fs_move(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    _fs(ctx).move(args["src"], args["dst"], overwrite=args["overwrite"])
    return {"src": args["src"], "dst": args["dst"], "moved": True}


# ---- archives -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    size: int
    kind: str  # file, dir, link, other
    open: Any  # () -> binary stream, for files


def _members(data: bytes, path: str) -> Iterator[_Member]:
    if zipfile.is_zipfile(io.BytesIO(data)):
        return _zip_members(zipfile.ZipFile(io.BytesIO(data)))
    try:
        # Not a context manager: the members' streams are opened lazily, after this returns.
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115
    except tarfile.TarError:
        raise ToolError(f"{path}: not a zip or tar archive", code="bad_args") from None
    return _tar_members(tf)


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist()[: MAX_MEMBERS + 1]:
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        kind = "dir" if info.is_dir() else "link" if is_link else "file"
        yield _Member(info.filename, info.file_size, kind, lambda i=info: zf.open(i))


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for n, info in enumerate(tf):
        if n > MAX_MEMBERS:
            break
        if info.isreg():
            kind = "file"
        elif info.isdir():
            kind = "dir"
        else:
            kind = "link" if info.issym() or info.islnk() else "other"
        yield _Member(info.name, info.size, kind, lambda i=info: tf.extractfile(i))


def archive_list(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    data = _fs(ctx).read(args["path"], max_bytes=MAX_ARCHIVE)
    entries = [{"name": m.name, "size": m.size, "kind": m.kind} for m in _members(data, args["path"])]
    limit = args["limit"]
    return {"entries": entries[:limit], "count": len(entries), "truncated": len(entries) > limit}


def _copy_capped(src: IO[bytes], cap: int, name: str) -> bytes:
    chunks, total = [], 0
    while chunk := src.read(1 << 16):
        total += len(chunk)
        if total > cap:
            raise ToolError(
                f"archive member {name!r} is larger than {cap} bytes once extracted", code="too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def archive_extract(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    fs = _fs(ctx, max_write=MAX_EXTRACT_FILE)
    data = fs.read(args["path"], max_bytes=MAX_ARCHIVE)
    dest = fs.parts(args["dest"])
    plan: list[tuple[str, _Member]] = []
    for m in _members(data, args["path"]):
        if len(plan) >= MAX_MEMBERS:
            raise ToolError(f"archive has more than {MAX_MEMBERS} members", code="too_large")
        if m.kind in ("link", "other"):
            raise SecurityError(f"archive member {m.name!r} is a link or device: refused")
        try:
            parts = fs.parts(m.name)
        except SecurityError as exc:
            raise SecurityError(f"archive member {m.name!r} refused (zip-slip): {exc.message}") from None
        if parts:
            plan.append(("/".join((*dest, *parts)), m))
    budget = min(MAX_EXTRACT_TOTAL, max(len(data), 1) * MAX_RATIO)
    blobs: list[tuple[str, bytes]] = []
    total = 0
    for target, m in plan:  # read everything (capped) before writing anything: all or nothing
        if m.kind == "dir":
            continue
        src = m.open()
        if src is None:
            continue
        blob = _copy_capped(src, min(MAX_EXTRACT_FILE, budget - total), m.name)
        total += len(blob)
        if not args["overwrite"] and fs.exists(target):
            raise ToolError(f"{target} exists (overwrite=false)", code="conflict")
        blobs.append((target, blob))
    for target, blob in blobs:
        fs.write(target, blob)
    return {"dest": args["dest"], "files": [t for t, _ in blobs], "bytes": total}


FILE_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="fs_glob",
        description="Find files in the agent's scoped folder by glob: *.txt, **/*.py, data/????.csv.",
        schema=_obj(
            {
                "pattern": {"type": "string", "minLength": 1, "maxLength": 500},
                "path": {"type": "string", "default": ".", "maxLength": 1024},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_MEMBERS, "default": 500},
            },
            ["pattern"],
        ),
        permission="fs.read",
        call=fs_glob,
    ),
    Tool(
        name="fs_grep",
        description="Search the agent's scoped files for a regex; gives path, line number and line.",
        schema=_obj(
            {
                "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
                "path": {"type": "string", "default": ".", "maxLength": 1024},
                "glob": {"type": "string", "default": "*", "maxLength": 200},
                "ignore_case": {"type": "boolean", "default": False},
                "max_matches": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 200},
            },
            ["pattern"],
        ),
        permission="fs.read",
        call=fs_grep,
    ),
    Tool(
        name="fs_patch",
        description="Apply a unified diff to scoped files (all hunks must match, or nothing changes).",
        schema=_obj(
            {
                "diff": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
                "dry_run": {"type": "boolean", "default": False},
            },
            ["diff"],
        ),
        permission="fs.write",
        call=fs_patch,
    ),
    Tool(
        name="fs_delete",
        description="Delete a file, or a directory (recursive=true if not empty) in the scoped folder.",
        schema=_obj({"path": _PATH, "recursive": {"type": "boolean", "default": False}}, ["path"]),
        permission="fs.write",
        call=fs_delete,
    ),
    Tool(
        name="fs_move",
        description="Move or rename a file or directory inside the agent's scoped folder.",
        schema=_obj(
            {"src": _PATH, "dst": _PATH, "overwrite": {"type": "boolean", "default": False}}, ["src", "dst"]
        ),
        permission="fs.write",
        call=fs_move,
    ),
    Tool(
        name="archive_list",
        description="List the entries of a zip or tar (.gz/.bz2/.xz) archive in the scoped folder.",
        schema=_obj(
            {
                "path": _PATH,
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_MEMBERS, "default": 1000},
            },
            ["path"],
        ),
        permission="fs.read",
        call=archive_list,
    ),
    Tool(
        name="archive_extract",
        description="Extract a zip or tar archive into a scoped folder (no links or escaping paths; capped).",
        schema=_obj(
            {
                "path": _PATH,
                "dest": {"type": "string", "default": ".", "maxLength": 1024},
                "overwrite": {"type": "boolean", "default": False},
            },
            ["path"],
        ),
        permission="fs.write",
        call=archive_extract,
    ),
)
