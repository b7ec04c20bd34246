"""File tools in the scoped root: glob, grep, patch, delete, move, archives (zip-slip, bombs, links)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from openfang.workers.tools.registry import ToolContext, default_registry

REG = default_registry()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "agents" / "a1" / "files"
    (r / "src" / "pkg").mkdir(parents=True)
    (r / "src" / "main.py").write_text("import os\nprint('hello')\n")
    (r / "src" / "pkg" / "util.py").write_text("def f():\n    return 1\n")
    (r / "notes.txt").write_text("Hello world\nsecond line\n")
    (tmp_path / "outside.txt").write_text("secret")
    return r


def run(root: Path, name: str, args: dict[str, Any], allowed: str = "*") -> Any:
    return REG.invoke(ToolContext(agent_id="a1", allowed=frozenset({allowed}), fs_root=root), name, args)


def ok(root: Path, name: str, args: dict[str, Any]) -> Any:
    res = run(root, name, args)
    assert res.ok, res
    return res.value


def fails(root: Path, name: str, args: dict[str, Any], code: str) -> str:
    res = run(root, name, args)
    assert (res.ok, res.code) == (False, code), res
    return res.error or ""


def test_fs_glob_matches_recursive_and_single_level_patterns(root: Path) -> None:
    """`**/*.py` finds files at any depth, `*.txt` only at the top, and `path` narrows the search."""
    assert [m["path"] for m in ok(root, "fs_glob", {"pattern": "**/*.py"})["matches"]] == [
        "src/main.py",
        "src/pkg/util.py",
    ]
    assert [m["path"] for m in ok(root, "fs_glob", {"pattern": "*.txt"})["matches"]] == ["notes.txt"]
    assert [m["path"] for m in ok(root, "fs_glob", {"pattern": "*.py", "path": "src"})["matches"]] == [
        "src/main.py"
    ]
    assert "'..'" in fails(root, "fs_glob", {"pattern": "*", "path": "../"}, "denied")


def test_fs_grep_finds_lines_and_never_follows_a_symlink_out(root: Path) -> None:
    """grep gives path and line; a symlink to a file outside the root is not read."""
    os.symlink(root.parent.parent.parent / "outside.txt", root / "link.txt")
    v = ok(root, "fs_grep", {"pattern": "hello|secret", "ignore_case": True})
    assert [(m["path"], m["line"]) for m in v["matches"]] == [("notes.txt", 1), ("src/main.py", 2)]
    v = ok(root, "fs_grep", {"pattern": "return", "glob": "*.py"})
    assert v["matches"] == [{"path": "src/pkg/util.py", "line": 2, "text": "    return 1"}]
    assert "invalid regex" in fails(root, "fs_grep", {"pattern": "("}, "bad_args")


DIFF = """--- a/src/pkg/util.py
+++ b/src/pkg/util.py
@@ -1,2 +1,3 @@
 def f():
-    return 1
+    # patched
+    return 2
--- /dev/null
+++ b/NEW.md
@@ -0,0 +1,1 @@
+created
"""


def test_fs_patch_applies_every_file_or_none(root: Path) -> None:
    """A two-file diff edits one file and creates another; a diff with a hunk that does not match changes
    nothing at all (not even the files whose hunks matched)."""
    assert ok(root, "fs_patch", {"diff": DIFF, "dry_run": True})["applied"] is False
    assert (root / "src/pkg/util.py").read_text() == "def f():\n    return 1\n"
    assert ok(root, "fs_patch", {"diff": DIFF}) == {"files": ["src/pkg/util.py", "NEW.md"], "applied": True}
    assert (root / "src/pkg/util.py").read_text() == "def f():\n    # patched\n    return 2\n"
    assert (root / "NEW.md").read_text() == "created\n"
    before = (root / "notes.txt").read_text()
    bad = DIFF.replace("NEW.md", "notes.txt").replace("a/src/pkg/util.py", "a/notes.txt")
    bad = bad.replace("b/src/pkg/util.py", "b/notes.txt")
    assert fails(root, "fs_patch", {"diff": bad}, "conflict")
    assert (root / "notes.txt").read_text() == before


def test_fs_patch_refuses_paths_outside_the_root_and_malformed_diffs(root: Path) -> None:
    """A diff header naming ../ or an absolute path is denied; garbage is bad_args naming the problem."""
    escape = "--- /dev/null\n+++ b/../../outside.txt\n@@ -0,0 +1,1 @@\n+pwned\n"
    assert "'..'" in fails(root, "fs_patch", {"diff": escape}, "denied")
    assert "absolute" in fails(root, "fs_patch", {"diff": escape.replace("b/../../", "/tmp/")}, "denied")
    assert "no file headers" in fails(root, "fs_patch", {"diff": "hello"}, "bad_args")
    short = "--- a/notes.txt\n+++ b/notes.txt\n@@ -1,5 +1,5 @@\n Hello world\n"
    assert "shorter than its header" in fails(root, "fs_patch", {"diff": short}, "bad_args")


def test_fs_delete_and_move_stay_inside_the_root(root: Path) -> None:
    """Delete needs recursive for a full directory and never the root; move refuses escapes and clobbering."""
    assert "not empty" in fails(root, "fs_delete", {"path": "src"}, "denied")
    assert "root" in fails(root, "fs_delete", {"path": "."}, "denied")
    ok(root, "fs_move", {"src": "notes.txt", "dst": "archive/2026/notes.txt"})
    assert (root / "archive/2026/notes.txt").is_file() and not (root / "notes.txt").exists()
    assert "exists" in fails(
        root, "fs_move", {"src": "src/main.py", "dst": "archive/2026/notes.txt"}, "denied"
    )
    assert "'..'" in fails(root, "fs_move", {"src": "src/main.py", "dst": "../x.py"}, "denied")
    assert "inside" in fails(root, "fs_move", {"src": "src", "dst": "src/pkg/again"}, "denied")
    assert (
        ok(root, "fs_delete", {"path": "src", "recursive": True})["removed"] == 4
    )  # src, main.py, pkg, util.py
    assert not (root / "src").exists() and (root.parent.parent.parent / "outside.txt").exists()
    assert fails(root, "fs_delete", {"path": "nope"}, "not_found")


def test_fs_delete_removes_a_symlink_not_its_target(root: Path) -> None:
    """Deleting a planted symlink removes the link; the file it points to outside the root survives."""
    outside = root.parent.parent.parent / "outside.txt"
    os.symlink(outside, root / "planted")
    ok(root, "fs_delete", {"path": "planted"})
    assert outside.read_text() == "secret" and not os.path.lexists(root / "planted")


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_archive_list_and_extract_a_zip_and_a_tarball(root: Path) -> None:
    """Entries are listed and extracted under `dest`; tar.gz works the same way."""
    (root / "a.zip").write_bytes(_zip({"docs/readme.txt": b"hi", "docs/b.txt": b"bee"}))
    assert ok(root, "archive_list", {"path": "a.zip"})["count"] == 2
    v = ok(root, "archive_extract", {"path": "a.zip", "dest": "out"})
    assert v["files"] == ["out/docs/readme.txt", "out/docs/b.txt"] and v["bytes"] == 5
    assert (root / "out/docs/b.txt").read_bytes() == b"bee"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("t/x.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"xyz"))
    (root / "b.tgz").write_bytes(buf.getvalue())
    assert ok(root, "archive_extract", {"path": "b.tgz", "dest": "tar"})["files"] == ["tar/t/x.txt"]
    assert run(root, "archive_extract", {"path": "b.tgz", "dest": "tar"}).code == "conflict"
    assert "not a zip or tar" in fails(root, "archive_list", {"path": "notes.txt"}, "bad_args")


@pytest.mark.parametrize("evil", ["../../escape.txt", "/etc/cron.d/evil", "ok/../../../escape.txt"])
def test_archive_extract_refuses_zip_slip_and_writes_nothing(root: Path, evil: str) -> None:
    """A member whose name escapes the destination is refused, and no member of that archive is written."""
    (root / "slip.zip").write_bytes(_zip({"fine.txt": b"fine", evil: b"pwned"}))
    assert "zip-slip" in fails(root, "archive_extract", {"path": "slip.zip"}, "denied")
    assert not (root / "fine.txt").exists()
    assert (
        not (root.parent / "escape.txt").exists() and not (root.parent.parent.parent / "escape.txt").exists()
    )


def test_archive_extract_refuses_symlink_members(root: Path) -> None:
    """A symlink inside an archive (a classic way to write through it later) is refused."""
    (root / "link.zip").write_bytes(_zip({"a.txt": b"a"}, symlink="evil-link"))
    assert "link" in fails(root, "archive_extract", {"path": "link.zip"}, "denied")


def test_archive_extract_stops_a_zip_bomb_by_bytes_written_not_headers(root: Path) -> None:
    """A small archive inflating past the ratio or size cap is refused while inflating; nothing is written."""
    (root / "bomb.zip").write_bytes(_zip({f"z{i}.bin": b"\0" * (8 << 20) for i in range(3)}))
    assert (root / "bomb.zip").stat().st_size < 200_000
    assert "larger than" in fails(root, "archive_extract", {"path": "bomb.zip"}, "too_large")
    assert not list(root.glob("z*.bin"))


def test_file_tools_need_their_permission_and_an_fs_root(root: Path) -> None:
    """Write tools need fs.write (fs.read is not enough); without an fs root they are unavailable."""
    assert run(root, "fs_delete", {"path": "notes.txt"}, allowed="fs.read").code == "denied"
    assert run(root, "fs_glob", {"pattern": "*"}, allowed="fs.read").ok
    res = REG.invoke(ToolContext(agent_id="a1", allowed=frozenset({"*"})), "fs_glob", {"pattern": "*"})
    assert res.code == "unavailable"
