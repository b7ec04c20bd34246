"""``openfang schedule list|add|remove``: durable messages to agents, once or by cron.

Local verbs: they read and write ``<data_dir>/schedules.db`` (found from ``--db``, ``--data-dir``,
``$OPENFANG_DATA_DIR`` or the cluster config), which the daemon's scheduler child watches; they work whether
or not the daemon is running, and a schedule added while it is down fires by its misfire policy when it
is back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from openfang.cli.connect import UsageError


def _db(args: argparse.Namespace) -> Path:
    if getattr(args, "db", None):
        return Path(args.db)
    data_dir = getattr(args, "data_dir", None) or os.environ.get("OPENFANG_DATA_DIR")
    if not data_dir:
        config = getattr(args, "config", None) or os.environ.get("OPENFANG_CONFIG")
        if not config:
            raise UsageError("schedule: pass --config (the cluster.toml), --data-dir or --db")
        from openfang.control.config import load_config

        data_dir = str(load_config(config).data_dir)
    return Path(data_dir) / "schedules.db"


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    if args.json:
        json.dump(value, sys.stdout, indent=2, default=str)
        print()
    else:
        print(text)


def cmd_schedule(args: argparse.Namespace) -> int:
    """schedules: list, add (--at TIME | --in DELAY | --cron EXPR), remove ID"""
    from openfang.control.schedules import ScheduleStore, parse_when

    with ScheduleStore(_db(args)) as store:
        if args.schedule_op == "add":
            at = None
            if args.at or args.delay:
                at = parse_when(args.at or args.delay, tz=args.tz)
            s = store.add(
                target=args.agent_id,
                text=args.text,
                created_by="operator",
                at=at,
                cron=args.cron,
                tz=args.tz,
                misfire=args.misfire,
                session=args.session,
            )
            _print(args, s.to_wire(), f"{s.id}  next run {s.to_wire()['next_run_iso']}")
            return 0
        if args.schedule_op == "remove":
            store.remove(args.schedule_id)
            _print(args, {"removed": args.schedule_id}, f"removed {args.schedule_id}")
            return 0
        rows = []
        for s in store.all(target=args.agent):
            row = s.to_wire()
            row["recent_runs"] = store.runs(s.id, limit=5)
            rows.append(row)
        lines = [f"{'ID':<17} {'AGENT':<24} {'WHEN':<22} {'NEXT RUN':<26} {'RUNS':>4}  LAST"]
        for r in rows:
            when = r["cron"] or "once"
            lines.append(
                f"{r['id']:<17} {r['target']:<24} {when:<22} {r['next_run_iso'] or '-':<26} {r['runs']:>4}  "
                f"{r['last_status'] or '-'}"
            )
        _print(args, rows, "\n".join(lines))
        return 0


def add_schedule_verbs(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``schedule list|add|remove`` on the CLI's verb parser."""
    place = argparse.ArgumentParser(add_help=False)
    place.add_argument("--db", help="the schedules database (default: <data dir>/schedules.db)")
    schedule = sub.add_parser("schedule", help="durable messages to agents, once or by cron")
    schedule_sub = schedule.add_subparsers(dest="schedule_op", required=True)
    p = schedule_sub.add_parser("list", parents=[common, place], help="every schedule with its next run")
    p.add_argument("--agent", help="only schedules for this agent")
    p = schedule_sub.add_parser("add", parents=[common, place], help="schedule a message to an agent")
    p.add_argument("agent_id")
    p.add_argument("text")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", help="once, at this ISO 8601 time (naive = in --tz)")
    when.add_argument("--in", dest="delay", help="once, after this delay: 90s, 10m, 2h, 1d")
    when.add_argument("--cron", help="by a five-field cron expression, e.g. '0 9 * * mon-fri'")
    p.add_argument("--tz", default="UTC", help="IANA time zone of --cron and a naive --at (default UTC)")
    p.add_argument(
        "--misfire",
        choices=["once", "skip", "all"],
        default="once",
        help="runs missed while the daemon was down: fire one (default), none, or each",
    )
    p.add_argument("--session", help="the conversation session the message goes to")
    p = schedule_sub.add_parser("remove", parents=[common, place], help="delete a schedule")
    p.add_argument("schedule_id")
    for parser in schedule_sub.choices.values():
        parser.set_defaults(handler=cmd_schedule)
