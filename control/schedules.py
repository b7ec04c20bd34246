"""Durable schedules: messages to agents, once or by cron, kept in ``<data_dir>/schedules.db``.

A schedule sends ``text`` to agent ``target`` at ``at`` (once) or at every occurrence of a cron expression in
a time zone. The store is SQLite (WAL, ``synchronous=FULL``: a committed schedule survives ``kill -9``),
written by the CLI (``openfang schedule add|remove``), by agents' ``schedule_*`` tools and by the scheduler
child that fires them; readers and writers are few and short, so SQLite's own locking is enough.

**Fire once, not twice.** A run is claimed before it is sent: in one transaction the scheduler inserts
``(schedule_id, due)`` into ``runs`` (unique) and moves ``next_run`` on. A second scheduler, or the same one
after a crash, cannot claim the same due time again. The cost is at-most-once: a crash between the claim and
the send loses that one run, and it stays visible as ``claimed`` in ``openfang schedule list`` (never as
delivered).

**Missed runs** (the daemon was down, or stopped longer than ``MISFIRE_GRACE_S``) follow the schedule's
``misfire`` policy: ``once`` (default) fires one run for everything missed, then resumes; ``skip`` records
the miss and resumes at the next future time; ``all`` fires every missed occurrence (``MAX_CATCH_UP`` at
most).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from openfang.protocol.coordination import MAX_SCHEDULE_TEXT, MISFIRE_POLICIES
from openfang.protocol.errors import ConfigError, NotFound, OpenFangError, Problem

MISFIRE_GRACE_S = 60.0
MAX_CATCH_UP = 100
MAX_TEXT = MAX_SCHEDULE_TEXT  # the schedule.add body's bound (protocol.coordination)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    text TEXT NOT NULL,
    session TEXT,
    cron TEXT,
    tz TEXT NOT NULL DEFAULT 'UTC',
    at REAL,
    misfire TEXT NOT NULL DEFAULT 'once',
    next_run REAL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    last_run REAL,
    last_status TEXT
);
CREATE INDEX IF NOT EXISTS schedules_next ON schedules(next_run) WHERE next_run IS NOT NULL;
CREATE TABLE IF NOT EXISTS runs (
    schedule_id TEXT NOT NULL,
    due REAL NOT NULL,
    claimed_at REAL NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (schedule_id, due)
);
"""


class ScheduleError(OpenFangError):
    """A schedule request that cannot be taken (bad cron, time in the past, unknown zone...)."""

    code = "bad_request"


@dataclass(frozen=True, slots=True)
class Schedule:
    """One row of ``schedules``."""

    id: str
    target: str
    text: str
    session: str | None
    cron: str | None
    tz: str
    at: float | None
    misfire: str
    next_run: float | None
    created_by: str
    created_at: float
    runs: int
    last_run: float | None
    last_status: str | None

    def to_wire(self) -> dict[str, Any]:
        """Plain data, with ISO times for people."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__}
        out["next_run_iso"] = _iso(self.next_run, self.tz)
        out["last_run_iso"] = _iso(self.last_run, self.tz)
        return out


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed run: send ``text`` to ``target`` now."""

    schedule_id: str
    due: float
    target: str
    text: str
    session: str | None
    missed: int  # occurrences folded into this one by the `once` policy


def _iso(ts: float | None, tz: str) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat()


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {tz!r} (use an IANA name like Europe/Paris)") from None


def next_after(cron: str, tz: str, after: float) -> float:
    """The first occurrence of ``cron`` in ``tz`` strictly after unix time ``after``."""
    start = datetime.fromtimestamp(after, _zone(tz))
    try:
        it = CronSim(cron, start)
        nxt = next(it)
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {cron!r}: {exc}") from None
    except StopIteration:
        raise ScheduleError(f"cron expression {cron!r} never fires") from None
    return nxt.timestamp()


def check_cron(cron: str, tz: str = "UTC") -> None:
    """Raise ScheduleError naming the problem if ``cron`` (five fields) in ``tz`` is not usable."""
    next_after(cron, tz, time.time())


class ScheduleStore:
    """The schedules of one data dir. One instance per thread (a sqlite3 connection is per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScheduleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- writes from the CLI and tools ---------------------------------------------------------------

    def add(
        self,
        *,
        target: str,
        text: str,
        created_by: str,
        at: float | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        misfire: str = "once",
        session: str | None = None,
        now: float | None = None,
    ) -> Schedule:
        """Record a schedule (exactly one of ``at`` and ``cron``); ScheduleError lists every problem."""
        now = time.time() if now is None else now
        problems: list[Problem] = []
        if (at is None) == (cron is None):
            problems.append(Problem("schedule", "give exactly one of at (a time) or cron (an expression)"))
        if not target:
            problems.append(Problem("schedule target", "the agent id is required"))
        if not text or len(text) > MAX_TEXT:
            problems.append(Problem("schedule text", f"must be 1 to {MAX_TEXT} characters"))
        if misfire not in MISFIRE_POLICIES:
            problems.append(Problem("schedule misfire", f"must be one of {', '.join(MISFIRE_POLICIES)}"))
        next_run: float | None = None
        try:
            _zone(tz)
            if cron is not None:
                next_run = next_after(cron, tz, now)
            elif at is not None:
                if at < now - MISFIRE_GRACE_S:
                    problems.append(Problem("schedule at", f"{_iso(at, tz)} is in the past"))
                next_run = at
        except ScheduleError as exc:
            problems.append(Problem("schedule", exc.message))
        if problems:
            raise ConfigError(problems)
        sid = "sch-" + uuid.uuid4().hex[:12]
        with self._tx() as db:
            db.execute(
                "INSERT INTO schedules (id, target, text, session, cron, tz, at, misfire, next_run, "
                "created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, target, text, session, cron, tz, at, misfire, next_run, created_by, now),
            )
        return self.get(sid)

    def remove(self, schedule_id: str, *, owner: str | None = None) -> None:
        """Delete a schedule (and its run history); with ``owner``, only one that owner created."""
        with self._tx() as db:
            sql, args = "DELETE FROM schedules WHERE id = ?", [schedule_id]
            if owner is not None:
                sql += " AND created_by = ?"
                args.append(owner)
            if db.execute(sql, args).rowcount == 0:
                raise NotFound(f"no schedule {schedule_id!r}" + (f" created by {owner!r}" if owner else ""))
            db.execute("DELETE FROM runs WHERE schedule_id = ?", (schedule_id,))

    def get(self, schedule_id: str) -> Schedule:
        row = self._db.execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        if row is None:
            raise NotFound(f"no schedule {schedule_id!r}")
        return Schedule(*row)

    def all(self, *, owner: str | None = None, target: str | None = None) -> list[Schedule]:
        sql, args = "SELECT * FROM schedules WHERE 1", []
        if owner is not None:
            sql += " AND created_by = ?"
            args.append(owner)
        if target is not None:
            sql += " AND target = ?"
            args.append(target)
        return [Schedule(*r) for r in self._db.execute(sql + " ORDER BY created_at", args)]

    def runs(self, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT due, claimed_at, status, detail FROM runs WHERE schedule_id = ? "
            "ORDER BY due DESC LIMIT ?",
            (schedule_id, limit),
        )
        return [{"due": d, "claimed_at": c, "status": s, "detail": x} for d, c, s, x in rows]

    # ---- the scheduler's side ------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The earliest next_run of any schedule (None when nothing is pending)."""
        row = self._db.execute("SELECT min(next_run) FROM schedules WHERE next_run IS NOT NULL").fetchone()
        return None if row[0] is None else float(row[0])

    def claim_due(self, now: float | None = None) -> list[Due]:
        """Claim every run due by ``now`` (one transaction per schedule), applying the misfire policy."""
        now = time.time() if now is None else now
        ids = [r[0] for r in self._db.execute("SELECT id FROM schedules WHERE next_run <= ?", (now,))]
        claimed: list[Due] = []
        for sid in ids:
            with self._tx() as db:
                row = db.execute(
                    "SELECT * FROM schedules WHERE id = ? AND next_run <= ?", (sid, now)
                ).fetchone()
                if row is None:
                    continue  # removed, or claimed by someone else since the first look
                claimed.extend(self._claim(db, Schedule(*row), now))
        return claimed

    def _claim(self, db: sqlite3.Connection, s: Schedule, now: float) -> list[Due]:
        assert s.next_run is not None
        dues = [s.next_run]
        if s.cron is not None:
            nxt = next_after(s.cron, s.tz, s.next_run)
            while nxt <= now and len(dues) < MAX_CATCH_UP + 1:
                dues.append(nxt)
                nxt = next_after(s.cron, s.tz, nxt)
            while nxt <= now:  # more than we catch up: skip ahead without listing them
                nxt = next_after(s.cron, s.tz, nxt)
            next_run: float | None = nxt
        else:
            next_run = None
        late = now - dues[-1] > MISFIRE_GRACE_S
        if s.misfire == "all" or (len(dues) == 1 and not late):
            fire = dues[-MAX_CATCH_UP:]
            skipped = dues[: -len(fire)]
        elif s.misfire == "once":
            fire, skipped = dues[-1:], dues[:-1]
        else:  # skip: nothing missed is sent
            fire, skipped = ([] if late else dues[-1:]), (dues if late else dues[:-1])
        for due in skipped:
            db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, 'missed', ?)",
                (s.id, due, now, json.dumps({"policy": s.misfire})),
            )
        out = []
        for due in fire:
            cur = db.execute("INSERT OR IGNORE INTO runs VALUES (?, ?, ?, 'claimed', NULL)", (s.id, due, now))
            if cur.rowcount == 1:
                out.append(
                    Due(s.id, due, s.target, s.text, s.session, len(skipped) if s.misfire == "once" else 0)
                )
        db.execute(
            "UPDATE schedules SET next_run = ?, runs = runs + ?, last_run = ? WHERE id = ?",
            (next_run, len(out), now if out else s.last_run, s.id),
        )
        return out

    def record(self, due: Due, status: str, detail: Any = None) -> None:
        """The outcome of a claimed run: ``delivered`` or ``failed`` (with the reason)."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, detail = ? WHERE schedule_id = ? AND due = ?",
                (
                    status,
                    json.dumps(detail, default=str) if detail is not None else None,
                    due.schedule_id,
                    due.due,
                ),
            )
            db.execute("UPDATE schedules SET last_status = ? WHERE id = ?", (status, due.schedule_id))


def parse_when(text: str, *, now: float | None = None, tz: str = "UTC") -> float:
    """``--at``/``in`` values: an ISO 8601 time (naive = in ``tz``), or a delay like ``90s``, ``10m``, ``2h``,
    ``1d``. ScheduleError naming the problem otherwise."""
    now = time.time() if now is None else now
    raw = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if raw[-1:] in units and raw[:-1].replace(".", "", 1).isdigit():
        return now + float(raw[:-1]) * units[raw[-1]]
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ScheduleError(
            f"cannot read time {text!r}: give ISO 8601 (2026-12-24T09:00) or a delay (10m)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(tz))
    return moment.astimezone(UTC).timestamp()
