"""The scheduler child: fires due schedules (``openfang.control.schedules``) as ``agent.send`` requests.

Declared in cluster.toml like the memory writer (``start = "openfang.control.scheduler:main"``). It is a
client of the control gateway like any other (no back door into workers): it claims due runs in the store,
hands each to a small thread pool that sends it through the gateway, and records ``delivered`` or
``failed`` with the reply or error. Long agent replies never delay the next schedule, and a gateway that is
restarting only fails the runs in flight (recorded as failed with the reason, and logged).

The loop wakes at the earliest ``next_run`` or every ``POLL_S`` (schedules added by the CLI or by agents'
tools land in the same SQLite file), and heartbeats its supervisor each turn.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from openfang.control.schedules import Due, ScheduleStore
from openfang.protocol.client import Client
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import OpenFangError
from openfang.supervisor.child import ChildContext

if TYPE_CHECKING:
    from openfang.security.config import SecurityConfig

log = structlog.get_logger("openfang.scheduler")
_Resource = TypeVar("_Resource", ScheduleStore, Client)
POLL_S = 0.5
SEND_TIMEOUT_S = 120.0
SENDERS = 4


class Scheduler:
    """Claims due runs and sends them; one store connection on the loop thread, one per sender thread."""

    def __init__(
        self,
        db_path: Path,
        endpoint: str,
        ctx: ChildContext | None = None,
        signer: Callable[[Envelope], Envelope] | None = None,
    ) -> None:
        self.db_path = db_path
        self.endpoint = endpoint
        self.signer = signer
        self.ctx = ctx
        self.running = True
        self.store = ScheduleStore(db_path)
        self._local = threading.local()
        self._opened: list[ScheduleStore | Client] = []  # the sender threads' own, closed in close()
        self._opened_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="schedule-send")

    def serve(self) -> None:
        if self.ctx is not None:
            self.ctx.ready(db=str(self.db_path))
        log.info("scheduler_started", db=str(self.db_path), endpoint=self.endpoint)
        while self.running:
            if self.ctx is not None:
                self.ctx.heartbeat()
                for _msg in self.ctx.pending():  # nothing to handle from the parent, but drain (and EOF)
                    pass
            for due in self.store.claim_due():
                self._pool.submit(self._send, due)
            nxt = self.store.next_due()
            wait = POLL_S if nxt is None else min(POLL_S, max(nxt - time.time(), 0.0))
            time.sleep(wait)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        for resource in self._opened:
            resource.close()
        self.store.close()

    def _send(self, due: Due) -> None:
        store, client = self._thread_state()
        body: dict[str, Any] = {"agent_id": due.target, "text": due.text}
        if due.session:
            body["session"] = due.session
        bound = log.bind(schedule_id=due.schedule_id, agent_id=due.target, due=due.due, missed=due.missed)
        try:
            reply = client.request("agent.send", body, timeout=SEND_TIMEOUT_S)
        except OpenFangError as exc:
            bound.warning("schedule_failed", code=exc.code, error=exc.message)
            store.record(due, "failed", {"code": exc.code, "message": exc.message})
            self._local.client = None  # a timed-out socket may hold a late reply: start clean
            with self._opened_lock:
                self._opened.remove(client)
            client.close()
            return
        bound.info("schedule_fired")
        store.record(due, "delivered", {"reply": str(reply.get("reply", ""))[:500]})

    def _thread_state(self) -> tuple[ScheduleStore, Client]:
        if getattr(self._local, "store", None) is None:
            self._local.store = self._keep(ScheduleStore(self.db_path))
        if getattr(self._local, "client", None) is None:
            self._local.client = self._keep(Client(self.endpoint, timeout=SEND_TIMEOUT_S, signer=self.signer))
        return self._local.store, self._local.client

    def _keep(self, resource: _Resource) -> _Resource:
        with self._opened_lock:
            self._opened.append(resource)
        return resource


def signer_for(
    security: SecurityConfig | Mapping[str, Any] | None, data_dir: str
) -> Callable[[Envelope], Envelope] | None:
    """When the cluster requires signed requests, sign with the first HMAC key of its key ring (as the CLI
    does with --config); None when signing is not required. ``security``: the typed config (the HTTP face)
    or its plain data (the scheduler, which may sit under a nested supervisor)."""
    if not security:
        return None
    from openfang.security import signing
    from openfang.security.config import security_from_args

    sec = security_from_args(security, data_dir=data_dir)
    if not (sec.signing.enabled and sec.signing.require):
        return None
    for spec in sec.signing_keys:
        if spec.alg == signing.HMAC_ALG and os.access(spec.file, os.R_OK):
            return signing.request_signer(signing.load_signing_key(spec.file, spec.id, spec.alg))
    log.error(
        "scheduler_cannot_sign", reason="signing is required and no HMAC key of the key ring is readable"
    )
    return None


def db_path_for(data_dir: str | os.PathLike[str]) -> Path:
    """Where a data dir keeps its schedules."""
    return Path(data_dir) / "schedules.db"


def main(ctx: ChildContext) -> None:
    """Child entry point: the data dir and control endpoint come from the cluster's environment."""
    structlog.contextvars.bind_contextvars(role="scheduler", pid=os.getpid())
    data_dir = ctx.args.get("data_dir") or os.environ["OPENFANG_DATA_DIR"]
    endpoint = ctx.args.get("endpoint") or os.environ["OPENFANG_CONTROL_ENDPOINT"]
    scheduler = Scheduler(
        db_path_for(data_dir), endpoint, ctx, signer_for(ctx.args.get("security"), data_dir)
    )

    def stop(_signum: int, _frame: object) -> None:
        scheduler.running = False

    signal.signal(signal.SIGTERM, stop)
    try:
        scheduler.serve()
    except EOFError:
        pass  # the supervisor is gone: PDEATHSIG follows
    finally:
        scheduler.close()
