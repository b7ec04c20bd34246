"""One valid example body per message type: PROTOCOL.md shows them, tests round-trip every one.

Fixed values (no clocks, no random ids) so the generated documentation is reproducible.
"""

from __future__ import annotations

from typing import Any

_NODE_WORKER = {
    "id": "worker-0",
    "path": "root/workers",
    "type": "worker",
    "pid": 4242,
    "cpu": 0,
    "state": "running",
    "started_at": 1767225600.5,
    "restarts": 0,
    "rss_bytes": 52428800,
    "uptime_s": 3600.25,
    "info": {"agents": 3},
    "children": [],
}
_NODE_WORKERS = {
    "id": "workers",
    "path": "root",
    "type": "supervisor",
    "pid": 4240,
    "cpu": None,
    "state": "running",
    "started_at": 1767225600.0,
    "restarts": 0,
    "rss_bytes": 20971520,
    "uptime_s": 3600.75,
    "info": {},
    "children": [_NODE_WORKER],
}
_COUNTS = {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
_AGENT = {
    "agent_id": "a-7f3c",
    "name": "echo",
    "worker": "worker-0",
    "state": "running",
    "service": "echo",
    "restarts": 0,
    "created_at": 1767225660.0,
}
_MANIFEST = '[agent]\nname = "echo"\nmodule = "guests/echo.wasm"\n'

REQUESTS: dict[str, dict[str, Any]] = {
    "ping": {},
    "status": {},
    "tree": {},
    "stop": {},
    "reload": {},
    "child.start": {
        "path": "root",
        "spec": {"id": "indexer", "start": "myapp.indexer:main", "restart": "transient"},
    },
    "child.terminate": {"path": "root", "id": "indexer"},
    "child.restart": {"path": "root", "id": "indexer"},
    "child.delete": {"path": "root", "id": "indexer"},
    "child.which": {"path": "root/workers"},
    "child.count": {"path": "root/workers"},
    "worker.ping": {"worker": "worker-0"},
    "agent.spawn": {"manifest": _MANIFEST, "manifest_path": "agents/echo.toml"},
    "agent.send": {"agent_id": "a-7f3c", "text": "hello", "session": "s1"},
    "agent.list": {},
    "agent.info": {"agent_id": "a-7f3c"},
    "agent.suspend": {"agent_id": "a-7f3c"},
    "agent.resume": {"agent_id": "a-7f3c"},
    "agent.hibernate": {"agent_id": "a-7f3c"},
    "agent.wake": {"agent_id": "a-7f3c"},
    "agent.move": {"agent_id": "a-7f3c", "to": "workers-1"},
    "agent.kill": {"agent_id": "a-7f3c"},
    "memory.search": {"query": "invoice total", "agent_id": "a-7f3c", "mode": "hybrid", "limit": 5},
    "memory.history": {"agent_id": "a-7f3c", "session": "s1", "limit": 20},
    "memory.stats": {},
    "security.report": {},
    "audit.verify": {},
}

REPLIES: dict[str, dict[str, Any]] = {
    "ping": {"pid": 4239, "time": 1767229200.125},
    "status": {
        "name": "openfang",
        "version": "0.1.0",
        "pid": 4238,
        "uptime_s": 3601.5,
        "state": "running",
        "config": "/etc/openfang/openfang.toml",
        "children": _COUNTS,
        "workers": 2,
        "events": "ipc:///run/openfang/events.sock",
    },
    "tree": {"children": [_NODE_WORKERS]},
    "stop": {},
    "reload": {
        "started": ["indexer"],
        "stopped": [],
        "replaced": ["memory"],
        "unchanged": ["control", "workers"],
    },
    "child.start": {"id": "indexer", "pid": 4300},
    "child.terminate": {},
    "child.restart": {"id": "indexer", "pid": 4301},
    "child.delete": {},
    "child.which": {
        "children": [
            {"id": "worker-0", "type": "worker", "state": "running", "pid": 4242},
            {"id": "worker-1", "type": "worker", "state": "restarting", "pid": None},
        ]
    },
    "child.count": _COUNTS,
    "worker.ping": {"worker": "worker-0", "pid": 4242, "cpu": 0},
    "agent.spawn": {"agent_id": "a-7f3c", "worker": "worker-0", "service": "echo"},
    "agent.send": {
        "reply": "hello",
        "agent_id": "a-7f3c",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "tool_calls": 0, "fuel": 81250},
    },
    "agent.list": {"agents": [_AGENT]},
    "agent.info": _AGENT,
    "agent.suspend": {"agent_id": "a-7f3c", "state": "suspended"},
    "agent.resume": {"agent_id": "a-7f3c", "state": "running"},
    "agent.hibernate": {"agent_id": "a-7f3c", "state": "hibernated"},
    "agent.wake": {"agent_id": "a-7f3c", "state": "running"},
    "agent.move": {
        "agent_id": "a-7f3c",
        "state": "running",
        "worker": "workers-1",
        "moved_from": "workers-0",
        "path": "snapshot",
        "move_ms": 4.2,
    },
    "agent.kill": {"agent_id": "a-7f3c", "state": "dead"},
    "memory.search": {
        "hits": [
            {
                "id": 17,
                "agent_id": "a-7f3c",
                "text": "Invoice 42: total 310 EUR",
                "score": 0.91,
                "kind": "fact",
            }
        ]
    },
    "memory.history": {
        "messages": [
            {"role": "user", "text": "hello", "time": 1767225700.0, "session": "s1", "tokens": 1},
            {"role": "assistant", "text": "hello", "time": 1767225700.5, "session": "s1", "tokens": 1},
        ]
    },
    "memory.stats": {
        "counts": {"episodes": 1200, "memories": 85, "tool_calls": 40},
        "db_bytes": 4194304,
        "embedder": "hash-384",
    },
    "security.report": {
        "layers": [
            {
                "layer": 3,
                "name": "rate limiting",
                "module": "openfang.security.ratelimit",
                "enabled": True,
                "config": {"client_requests": {"rate": 200.0, "burst": 400.0}},
            }
        ]
    },
    "audit.verify": {
        "ok": True,
        "records": 5120,
        "first_bad_index": None,
        "reason": "",
        "path": "/var/lib/openfang/audit.db",
        "keyed": True,
        "key_file": "/var/lib/openfang/audit.key",
        "ms": 41.7,
    },
}

EVENT: dict[str, Any] = {
    "kind": "child.exited",
    "time": 1767229260.5,
    "path": "root/workers",
    "id": "worker-1",
    "pid": 4243,
    "reason": "abnormal",
    "status": 137,
}

ERROR: dict[str, Any] = {
    "code": "bad_config",
    "message": "openfang.toml: [supervisor].intensity: must be an integer >= 0, got -1",
    "problems": [
        {"where": "openfang.toml: [supervisor].intensity", "what": "must be an integer >= 0, got -1"}
    ],
}

# Internal messages (gateway <-> workers, agents through worker.forward, the memory writer), by type.
INTERNAL: dict[str, dict[str, Any]] = {
    "worker.hello": {"worker": "workers-0", "pid": 4242, "cpu": 0, "agents": 1, "agent_ids": ["a-7f3c"]},
    "worker.resync": {},
    "worker.forward": {
        "sender": "a-7f3c",
        "request": {"type": "agent.send", "body": {"agent_id": "a-9d21", "text": "hello"}},
    },
}
INTERNAL.update(
    {
        "schedule.add": {
            "target": "a-7f3c",
            "text": "daily report",
            "cron": "0 9 * * *",
            "tz": "Europe/Paris",
        },
        "schedule.list": {},
        "schedule.remove": {"schedule_id": "sch-0123456789ab"},
        "topic.subscribe": {"topic": "news"},
        "topic.unsubscribe": {"topic": "news"},
        "topic.subscribers": {"topic": "news"},
        "memory.episode": {"agent_id": "a-7f3c", "session": "s1", "role": "user", "text": "hello"},
        "memory.store": {
            "agent_id": "a-7f3c",
            "text": "Invoice 42: total 310 EUR",
            "kind": "fact",
            "tags": ["billing"],
        },
        "memory.tool_call": {
            "agent_id": "a-7f3c",
            "tool": "time_now",
            "status": "ok",
            "session": "s1",
            "args": {},
            "duration_ms": 0.4,
        },
        "memory.write": {
            "ops": [
                {
                    "type": "memory.episode",
                    "body": {"agent_id": "a-7f3c", "session": "s1", "role": "assistant", "text": "done"},
                },
                {"type": "memory.forget", "body": {"agent_id": "a-7f3c", "id": 17}},
            ]
        },
        "memory.forget": {"agent_id": "a-7f3c", "id": 17},
        "memory.reclaim": {"agent_id": "a-7f3c", "policy": "archive"},
        "memory.compact": {},
        "memory.ping": {},
    }
)

_SCHEDULE = {
    "id": "sch-0123456789ab",
    "target": "a-7f3c",
    "text": "daily report",
    "session": "schedule:a-7f3c",
    "cron": "0 9 * * *",
    "tz": "Europe/Paris",
    "at": None,
    "misfire": "once",
    "next_run": 1767254400.0,
    "created_by": "a-7f3c",
    "created_at": 1767229200.0,
    "runs": 0,
    "last_run": None,
    "last_status": None,
    "next_run_iso": "2026-01-01T09:00:00+01:00",
    "last_run_iso": None,
}

# Replies of the internal requests that have one, by request type.
INTERNAL_REPLIES: dict[str, dict[str, Any]] = {
    "schedule.add": _SCHEDULE,
    "schedule.list": {"schedules": [_SCHEDULE]},
    "schedule.remove": {"schedule_id": "sch-0123456789ab", "removed": True},
    "topic.subscribe": {"topic": "news", "subscribed": True, "new": True, "topics": ["news"]},
    "topic.unsubscribe": {"topic": "news", "unsubscribed": True},
    "topic.subscribers": {"topic": "news", "subscribers": ["a-9d21"]},
    "memory.episode": {"seq": 42, "id": 1200},
    "memory.store": {"seq": 43, "id": 86},
    "memory.tool_call": {"seq": 44, "id": 41},
    "memory.write": {"seq": 45, "results": [{"id": 1201}, {"deleted": 1}]},
    "memory.forget": {"seq": 46, "deleted": 1},
    "memory.reclaim": {
        "seq": 47,
        "policy": "archive",
        "counts": {"episodes": 1201, "memories": 85, "tool_calls": 41},
    },
    "memory.compact": {"seq": 48, "counts": {"memories": 2, "ledger": 310}},
    "memory.ping": {"seq": 48, "queued": 0},
}
