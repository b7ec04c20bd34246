"""``openfang-supervisor``: the daemon, which is the root of the supervision tree.

It reads ``cluster.toml``, starts the tree in order (the control gateway first), tells systemd it is ready,
and then lives in a thread-free event loop: SIGTERM/SIGINT stop the tree in reverse order and exit 0, SIGHUP
reloads the configuration (a bad one is rejected and the running tree is left as it is), the watchdog is
fed from the loop, and the gateway's questions about the tree are answered here.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from openfang import __version__, _coldstart
from openfang.control import runfile
from openfang.control.baseline import BaselineHelper
from openfang.control.config import GATEWAY_ID, ClusterConfig, load_config
from openfang.control.notify import Notifier
from openfang.logs import configure_logging
from openfang.protocol.errors import ConfigError, OpenFangError, Problem, SupervisorError
from openfang.security.audit import AuditLog
from openfang.security.config import audit_key, open_audit, prepare_version_state
from openfang.security.integrity import IntegrityMonitor
from openfang.supervisor import preload
from openfang.supervisor._proc import set_title
from openfang.supervisor.child import EXIT_CRASH, EXIT_ESCALATED
from openfang.supervisor.loop import Loop
from openfang.supervisor.runtime import SupervisorCore, supervisor_for
from openfang.supervisor.spec import ChildSpec, ChildType, SupervisorSpec

if TYPE_CHECKING:
    import argparse

log = structlog.get_logger("openfang.supervisor")
EXIT_CONFIG = 2
EXIT_START_FAILED = EXIT_CRASH  # as a nested supervisor whose children cannot start
WORKER_START = "openfang.workers.worker:"
_GATEWAY_PATH = f"root/{GATEWAY_ID}"
EVACUATE_TIMEOUT_S = 15.0  # a reload waits this long for the gateway to move agents off leaving workers
Reply = Callable[[bool, Any], None]


class Daemon:
    """The root supervisor process."""

    def __init__(
        self,
        config: ClusterConfig,
        config_path: str,
        notifier: Notifier | None = None,
        *,
        data_dir: str | None = None,
    ) -> None:
        self.config = config
        # Reloads read the same path with the same overrides as the first load: any difference between the
        # two parses (a relative path resolved differently, a --data-dir not re-applied) would show up in the
        # children's args and restart children whose config did not change.
        self.config_path = config_path
        self.data_dir_override = data_dir
        self.notifier = notifier or Notifier()
        self.loop = Loop()
        self.started_at = time.time()
        self.state = "starting"
        self.exit_code = 0
        self.reloads = 0
        self.reloading = False  # a reload waits for the gateway to move agents off the workers it stops
        self.audit: AuditLog | None = None  # opened once the tree has started (run)
        self.integrity: IntegrityMonitor | None = None  # layer 14, from the baseline taken at start
        self._baseline: BaselineHelper | None = None  # the helper whose answer is not taken yet
        self._helper_fd: int | None = None  # the loop reads the helper's answer from this fd while set
        self._prepared = False  # _before_ready ran
        self._start_problem: tuple[str, Exception] | None = None  # what fails the start before READY
        # The root is a subreaper (it sets that itself at start): orphaned descendants are reaped here.
        self.sup: SupervisorCore = supervisor_for(
            config.tree,
            loop=self.loop,
            path="root",
            on_event=self._on_event,
            on_request=self._on_request,
            on_terminate=self._on_terminate,
        )

    # -- lifecycle ----------

    def run(self) -> int:
        """Start the tree, serve until stopped; the process exit code."""
        _prepare_dirs(self.config)
        os.environ.update(self.config.child_environment())
        # Layer 14's baseline is taken by a helper on the other core while the tree starts (see
        # control/baseline.py); forked before the signal handlers, which it must not share.
        baseline = BaselineHelper.start(self.config.security)
        try:
            return self._run(baseline)
        finally:
            preload.discard()
            if baseline is not None:
                baseline.close()

    def _run(self, baseline: BaselineHelper | None) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload_from_signal)
        # The chain key exists before any child reads it; the root's own handle on the log is opened once
        # the tree has started (it audits only layer 14's findings): the gateway, starting meanwhile on the
        # other core, makes a fresh data dir's audit.db (its fsyncs off the root's path).
        audit_key(self.config.security)
        self.notifier.status("starting the supervision tree")
        self._baseline = baseline
        helper_fd = None if baseline is None else baseline.fileno
        if baseline is not None and helper_fd is not None:
            # The helper's answer is read as it comes, while the tree starts (the loop runs then).
            def helper_readable() -> None:
                if baseline.poll():
                    self._stop_reading_helper()

            self.loop.add_reader(helper_fd, helper_readable)
            self._helper_fd = helper_fd
        try:
            self.sup.start()
        except OpenFangError as exc:
            log.error("tree_start_failed", error=str(exc))
            self.notifier.stopping()
            if self.audit is not None:
                self.audit.close()
            self._remove_pidfile()
            return EXIT_START_FAILED
        finally:
            self._stop_reading_helper()
            # The start's imports and setup made next to no garbage: collected from now on (children
            # forked meanwhile turned their own collector on: openfang/_coldstart.py).
            _coldstart.resume()
        self._before_ready()  # if it did not run while the children started
        self._take_baseline(wait=True)
        if self._start_problem is not None:  # as a failed start, before READY as always
            event, problem = self._start_problem
            log.error(event, error=str(problem))
            self.stop()
            return EXIT_START_FAILED
        self.state = "running"
        # At READY, not before (~1 ms): the run record tells `openfang` and scripts a daemon is up and
        # answering, and a stop during the start finds none to remove.
        self._write_pidfile()
        counts = self.sup.count_children()
        self.notifier.ready(f"running: {counts.get('active', 0)} children")
        if baseline is not None:
            baseline.close()  # after READY: told to exit and reaped here, never by the orphan reaper
        preload.discard()  # a preloaded worker process no child took (a tree without such workers)
        log.info("tree_started", config=self.config_path, endpoint=self.config.control.endpoint, **counts)
        if self.notifier.watchdog_interval_s:
            self._feed_watchdog()
        if self.integrity is not None:
            self.loop.call_later(self.config.security.integrity.interval_s, self._check_integrity)
        self.loop.run_until(lambda: self.state == "stopped")
        if self.audit is not None:
            self.audit.close()
        return self.exit_code

    def _before_ready(self, *, in_loop: bool = False) -> None:
        """The root's own checks before READY (its handle on the audit log, layer 16's state file, layer 14's
        baseline), run once: the first time the root waits, idle, for a child started after the gateway
        (queued by the gateway's start, whose ready means the log's file is made; a worker's start is ~7 ms
        of the root waiting) or, failing that, after the tree has started. The baseline is taken then only if
        the helper's answer is all in (and the helper reaped there, ``in_loop``). A problem is kept and fails
        the start once the tree has started, before READY."""
        if self._prepared:
            return
        self._prepared = True
        try:
            self.audit = open_audit(self.config.security)
        except ConfigError as exc:  # the log cannot be opened: as a failed start
            self._start_problem = ("audit_open_failed", exc)
            return
        # Layer 16's state file, made here while the first worker starts: that worker only opens it (in a
        # fresh data dir its making, two fsyncs, was on the cold start's path, in the worker's warm-up).
        prepare_version_state(self.config.security)
        self._take_baseline(wait=False, reap=in_loop)

    def _before_ready_soon(self) -> None:
        # In the loop, whose callbacks' errors are only logged: anything unexpected fails the start too.
        try:
            self._before_ready(in_loop=True)
        except Exception as exc:
            self._start_problem = ("start_check_failed", exc)

    def _take_baseline(self, *, wait: bool, reap: bool = False) -> None:
        """Layer 14's monitor from the helper's answer: now if the answer is all in (or ``wait``), else
        later (:meth:`_run` calls again with ``wait``). The helper is then told to exit; ``reap``: and
        reaped here (the root's loop, idle while its workers start)."""
        baseline = self._baseline
        if baseline is None or self._start_problem is not None or not self._prepared:
            return
        if not baseline.poll():
            if not wait:
                return
            baseline.hurry()  # the root has nothing else to do before READY
        self._baseline = None
        try:
            self.integrity = baseline.monitor(self.audit)
        except (OSError, ValueError) as exc:  # a configured file that cannot be read: as a failed start
            self._start_problem = ("integrity_baseline_failed", exc)
        finally:
            # Its answer is taken: the helper exits now, while the root waits for its workers or writes its
            # run files, not beside the first request's work after READY. Reaped at once in the loop (the
            # root is idle there, and the orphan reaper, which runs from the loop too, must not take it for
            # an orphan); otherwise after READY, by _run's close (READY does not wait for its exit).
            # The loop stops reading its end first: release closes that socket, and its fd number goes to
            # the next socket made (a child's uplink), whose reader must not be the one removed later.
            self._stop_reading_helper()
            baseline.release()
            if reap:
                baseline.hurry()  # its exit is waited for: not at nice +10 behind the workers' start
                baseline.close()

    def _stop_reading_helper(self) -> None:
        """Remove the loop's reader of layer 14's helper, once (its fd is reused once the pair is closed)."""
        if self._helper_fd is not None:
            self.loop.remove_reader(self._helper_fd)
            self._helper_fd = None

    def stop(self) -> None:
        """Stop the whole tree in reverse start order, honouring each child's shutdown policy."""
        if self.state in ("stopping", "stopped"):
            return
        self.state = "stopping"
        self.notifier.stopping()
        log.info("tree_stopping")
        # The gateway must not take the workers' exits for deaths: their agents stay registered where they
        # are and come back on the next start.
        self.sup.send_to_child(GATEWAY_ID, {"t": "event", "event": {"kind": "tree.stopping"}})
        self.sup.shutdown()
        self.state = "stopped"
        self._remove_pidfile()
        log.info("tree_stopped", exit_code=self.exit_code)

    def reload_from_signal(self) -> None:
        self.reload(lambda ok, result: None)

    def reload(self, reply: Reply) -> None:
        """Re-read the config file and apply the difference; a bad config leaves the running tree as it is."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, data_dir=self.data_dir_override)
            if new.data_dir != self.config.data_dir:
                raise ConfigError(
                    [
                        Problem(
                            f"{self.config_path}: [cluster] key 'data_dir'",
                            f"cannot change on reload (running with {self.config.data_dir}, the file now "
                            f"gives {new.data_dir}); restart the daemon to move it",
                        )
                    ]
                )
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            log.error("config_rejected", problems=problems)
            self._on_event({"kind": "config.rejected", "problems": problems})
            self.notifier.ready("running (last reload rejected)")
            reply(False, {"code": exc.code, "message": exc.message})
            return
        if self.reloading:
            reply(False, {"code": "busy", "message": "a reload is in progress (moving agents); retry"})
            return
        leaving = leaving_workers(self.config.tree, new.tree)
        if not leaving:
            self._apply(new, reply, [])
            return
        # Workers this reload stops or replaces: their agents move first (their guest state by snapshot),
        # so the stop loses nothing (issue 9 item 6). The gateway answers once every source has let its
        # agents go; past EVACUATE_TIMEOUT_S the reload goes ahead and the rest restart by policy.
        self.reloading = True
        log.info("reload_moving_agents", workers=leaving)
        answered = False

        def evacuated(ok: bool, result: Any) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            self.reloading = False
            if self.state != "running":  # stopped meanwhile: nothing left to reconfigure
                reply(False, {"code": "supervisor_error", "message": f"the daemon is {self.state}"})
                return
            if ok:
                log.info("reload_agents_moved", workers=leaving, result=result)
            else:
                log.warning("reload_agents_not_moved", workers=leaving, error=result)
            self._apply(new, reply, leaving)

        self.sup.ask(GATEWAY_ID, "gateway.evacuate", {"workers": leaving}, evacuated)
        self.loop.call_later(
            EVACUATE_TIMEOUT_S, lambda: evacuated(False, {"message": f"no answer in {EVACUATE_TIMEOUT_S:g}s"})
        )

    def _apply(self, new: ClusterConfig, reply: Reply, drained: list[str]) -> None:
        """The second half of a reload: reconfigure the tree to ``new``."""
        try:
            diff = self.sup.reconfigure(new.tree)
        except OpenFangError as exc:
            log.error("reload_failed", error=str(exc))
            if drained:  # the workers stay: they may host agents again
                self.sup.ask(GATEWAY_ID, "gateway.undrain", {"workers": drained}, lambda ok, result: None)
            self.notifier.ready("running (last reload failed)")
            reply(False, exc.to_wire())
            return
        self.config = new
        self.reloads += 1
        self._send_pools()
        log.info("config_reloaded", **diff)
        self._on_event({"kind": "config.reloaded", **diff})
        self.notifier.ready(f"running: reloaded ({self.reloads})")
        reply(True, diff)

    def _on_terminate(self, reason: str) -> None:
        # The root gave up (restart intensity exceeded): like an OTP node whose top supervisor died.
        log.error("root_supervisor_terminated", reason=reason)
        self.exit_code = EXIT_ESCALATED
        self.notifier.stopping()
        self.state = "stopped"
        self._remove_pidfile()

    def _check_integrity(self) -> None:
        """Layer 14: re-hash the daemon's own files; a change is logged, audited and published."""
        if self.integrity is None or self.state == "stopped":
            return
        for violation in self.integrity.check():
            log.error("integrity_violation", path=violation.path, kind=str(violation.kind))
            self._on_event(
                {"kind": "security.integrity", "path": violation.path, "violation": str(violation.kind)}
            )
        self.loop.call_later(self.config.security.integrity.interval_s, self._check_integrity)

    def _feed_watchdog(self) -> None:
        # Fed from the loop itself: a wedged loop stops feeding and systemd restarts us.
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval_s
        if interval and self.state not in ("stopped",):
            self.loop.call_later(interval, self._feed_watchdog)

    # -- events and requests ----------

    def _on_event(self, event: dict[str, Any]) -> None:
        # Not logged here: the supervisor that owns a child logs its events (child_started, ...), and the
        # daemon's own events are logged where they happen (config_reloaded, integrity_violation...).
        event.setdefault("time", time.time())
        if (
            self.state == "starting"
            and event.get("kind") == "child.started"
            and event.get("path") == _GATEWAY_PATH
        ):
            # The root's own checks before READY, once it waits for the next children (see _before_ready).
            self.loop.call_when_idle(self._before_ready_soon)
        if self.state != "stopped":
            self.sup.send_to_child(GATEWAY_ID, {"t": "event", "event": event})
            if (
                event.get("kind") in ("child.started", "child.restarted")
                and event.get("path") == _GATEWAY_PATH
            ):
                self._send_pools()  # a (re)started gateway learns the elastic pools it runs

    def _send_pools(self) -> None:
        """Tell the gateway which worker pools are elastic (control/elastic.py decides when each grows and
        shrinks, and asks back with child.restart / child.terminate)."""
        pools = [pool.to_wire() for pool in self.config.pools]

        def answered(ok: bool, result: Any) -> None:
            if not ok:
                log.warning("gateway_pools_not_sent", error=result)

        self.sup.ask(GATEWAY_ID, "gateway.pools", {"pools": pools}, answered)

    def _on_request(self, child_id: str, op: str, args: dict[str, Any], reply: Reply) -> None:
        try:
            if op == "status":
                reply(True, self.status())
            elif op == "tree":
                reply(True, {"root": self.root_node(), "children": annotate(self.sup.tree())})
            elif op == "stop":
                reply(True, {"stopping": True})
                self.loop.call_soon(self.stop)
            elif op == "reload":
                self.reload(reply)
            elif op.startswith("child."):
                self._child_op(op, args, reply)
            else:
                reply(False, {"code": "unknown_type", "message": f"the supervisor has no operation {op!r}"})
        except OpenFangError as exc:
            reply(False, exc.to_wire())

    def _child_op(self, op: str, args: dict[str, Any], reply: Reply) -> None:
        path = str(args.get("path") or "root")
        names = {
            "child.start": "start_child",
            "child.terminate": "terminate_child",
            "child.restart": "restart_child",
            "child.delete": "delete_child",
            "child.which": "which_children",
            "child.count": "count_children",
        }
        if op not in names:
            raise SupervisorError(f"no operation {op!r}")
        op_args = {k: v for k, v in args.items() if k != "path"}
        self.sup.request(path, names[op], op_args, reply)

    def status(self) -> dict[str, Any]:
        counts = self.sup.count_children()
        tree = self.sup.tree()
        return {
            "name": self.config.name,
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state,
            "uptime_s": round(time.time() - self.started_at, 3),
            "config": self.config_path,
            "data_dir": str(self.config.data_dir),
            "endpoint": self.config.control.endpoint,
            "events": self.config.control.events,
            "children": counts,
            "workers": _count_workers(tree),
            "pools": {
                pool.path: {
                    "running": _count_workers(_subtree(tree, pool.path)),
                    "max": len(pool.members),
                    "min_running": pool.min_running,
                }
                for pool in self.config.pools
            },
            "reloads": self.reloads,
            "systemd": self.notifier.enabled,
        }

    def root_node(self) -> dict[str, Any]:
        return {
            "id": "root",
            "path": "root",
            "type": "supervisor",
            "pid": os.getpid(),
            "cpu": None,
            "state": self.state,
            "started_at": self.started_at,
            "restarts": 0,
            **_process_figures(os.getpid()),
        }

    # -- files ----------

    @property
    def pidfile(self) -> Path:
        return self.config.data_dir / "run" / "supervisor.pid"

    def _write_pidfile(self) -> None:
        self.pidfile.write_text(f"{os.getpid()}\n")
        # The run record lets `openfang` find this daemon whatever data dir it was started with.
        runfile.publish(
            runfile.RunRecord(
                name=self.config.name,
                pid=os.getpid(),
                started=runfile.start_time(os.getpid()) or self.started_at,
                config=self.config_path,
                data_dir=str(self.config.data_dir),
                endpoint=self.config.control.endpoint,
                events=self.config.control.events,
            )
        )

    def _remove_pidfile(self) -> None:
        runfile.withdraw(self.config.name, os.getpid())
        try:
            if self.pidfile.read_text().strip() == str(os.getpid()):
                self.pidfile.unlink()
        except OSError:
            pass


def annotate(nodes: list[dict[str, Any]], host: int | None = None) -> list[dict[str, Any]]:
    """Add live RSS and uptime to each node of a tree snapshot (recursively). A node whose pid is its
    host's (``host``: the process its parent runs in) is an inline supervisor: it has no process of its
    own, so no figures (the host's would be counted twice)."""
    host = os.getpid() if host is None else host
    out = []
    for node in nodes:
        node = dict(node)
        pid = int(node["pid"]) if node.get("pid") else None
        if pid is not None:
            node.update(_process_figures(pid) if pid != host else {"rss_bytes": None, "uptime_s": None})
        # A supervisor that is not running has no children (its last snapshot would list them as stopped).
        gone = node.get("type") == "supervisor" and pid is None
        node["children"] = [] if gone else annotate(list(node.get("children") or []), pid or host)
        out.append(node)
    return out


def _process_figures(pid: int) -> dict[str, Any]:
    import psutil  # here: the daemon asks only when a client does, never before it is ready

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return {
                "rss_bytes": proc.memory_info().rss,
                "uptime_s": round(time.time() - proc.create_time(), 3),
            }
    except psutil.Error:
        return {"rss_bytes": None, "uptime_s": None}


def leaving_workers(old: SupervisorSpec, new: SupervisorSpec) -> list[str]:
    """The worker processes a reload from ``old`` to ``new`` stops or replaces, by the rules of
    ``Supervisor.reconfigure``: a child gone or changed goes with its whole subtree, a nested supervisor
    whose children alone changed is reconfigured below."""
    wanted = {c.id: c for c in new.children}
    out: list[str] = []
    for child in old.children:
        spec = wanted.get(child.id)
        if spec == child:
            continue
        if spec is not None and dataclasses.replace(child, autostart=spec.autostart) == spec:
            continue  # only autostart changed: reconfigure neither stops nor restarts it
        if spec is not None and _only_children_differ(child, spec):
            assert child.supervisor is not None and spec.supervisor is not None
            out += leaving_workers(child.supervisor, spec.supervisor)
        else:
            out += _workers_in(child)
    return out


def _only_children_differ(old: ChildSpec, new: ChildSpec) -> bool:
    if ChildType.SUPERVISOR not in (old.type, new.type) or old.type != new.type:
        return False
    if old.supervisor is None or new.supervisor is None:
        return False
    return dataclasses.replace(old, supervisor=None) == dataclasses.replace(new, supervisor=None)


def _workers_in(child: ChildSpec) -> list[str]:
    if child.supervisor is not None:
        return [w for c in child.supervisor.children for w in _workers_in(c)]
    return [child.id] if child.start.startswith(WORKER_START) else []


def _count_workers(nodes: list[dict[str, Any]]) -> int:
    """The worker processes that run or are being restarted (not an elastic pool's stopped members)."""
    total = 0
    for node in nodes:
        if (
            node.get("type") == "worker"
            and str(node.get("start", "")).startswith("openfang.workers.worker")
            and node.get("state") in ("running", "restarting")
        ):
            total += 1
        total += _count_workers(list(node.get("children") or []))
    return total


def _subtree(nodes: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The children of the node at ``path`` in a tree snapshot (empty if there is none)."""
    for node in nodes:
        if node.get("path") == path:
            return list(node.get("children") or [])
        if path.startswith(f"{node.get('path')}/"):
            return _subtree(list(node.get("children") or []), path)
    return []


def _prepare_dirs(config: ClusterConfig) -> None:
    for d in (config.data_dir, config.data_dir / "run"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here: a plain command line is read without it (parse_args)

    parser = argparse.ArgumentParser(
        prog="openfang-supervisor",
        description="Run the OpenFANG supervision tree in the foreground (the root supervisor). "
        "SIGTERM/SIGINT stop the tree in reverse order and exit 0; SIGHUP reloads the config.",
        epilog=f"exit status: 0 stopped by a signal, {EXIT_START_FAILED} the tree failed to start, "
        f"{EXIT_CONFIG} invalid config, {EXIT_ESCALATED} the root supervisor gave up (restart intensity "
        "exceeded, like a nested supervisor that escalates)",
    )
    parser.add_argument("--config", required=True, help="path to cluster.toml")
    parser.add_argument("--check", action="store_true", help="validate the config and exit (0 ok, 2 invalid)")
    parser.add_argument("--data-dir", help="override [cluster] data_dir")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="override [logging]")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="override [logging] format")
    parser.add_argument("--version", action="version", version=f"openfang-supervisor {__version__}")
    return parser


LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["auto", "json", "console"]
# The plain command line parse_args reads itself: option -> (its field, its choices or None).
_OPTIONS: dict[str, tuple[str, list[str] | None]] = {
    "--config": ("config", None),
    "--data-dir": ("data_dir", None),
    "--log-level": ("log_level", LOG_LEVELS),
    "--log-format": ("log_format", LOG_FORMATS),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DaemonArgs:
    """The daemon's command line, as :func:`build_parser` defines it."""

    config: str
    check: bool = False
    data_dir: str | None = None
    log_level: str | None = None
    log_format: str | None = None


def parse_args(argv: list[str] | None = None) -> DaemonArgs:
    """``argv`` (default ``sys.argv[1:]``) read as :func:`build_parser` reads it.

    A plain command line (``--config PATH`` and the other options each at most once as ``--option VALUE``
    with a valid value, ``--check``) is read here: building the argparse parser costs ~5 ms on the cold
    start's path (gettext's catalogue lookups for its texts, shutil for the help's width). Anything else
    (``--help``, ``--version``, ``--option=VALUE``, an abbreviation, a repeat, a mistake) goes to argparse,
    which answers or fails as it always did.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    values: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--check" and "check" not in values:
            values["check"] = True
            i += 1
            continue
        field, choices = _OPTIONS.get(word, ("", None))
        value = words[i + 1] if i + 1 < len(words) else None
        if (
            not field
            or field in values
            or value is None
            or value.startswith("-")
            or (choices is not None and value not in choices)
        ):
            return _parsed(build_parser().parse_args(words))
        values[field] = value
        i += 2
    if "config" not in values:
        return _parsed(build_parser().parse_args(words))
    return DaemonArgs(**values)


def _parsed(namespace: argparse.Namespace) -> DaemonArgs:
    return DaemonArgs(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(DaemonArgs)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One absolute path for the first load and every reload: the path is part of what children see
    # (their [security] source), so a relative --config must not parse differently on SIGHUP.
    config_path = str(Path(args.config).resolve())
    try:
        config = load_config(config_path, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"openfang-supervisor: {len(exc.problems)} problem(s) in {args.config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: ok ({len(config.tree.children)} children under root)")
        return 0
    set_title("openfang: supervisor")
    preload.fit(config.tree)  # the preloaded worker process, kept only if this tree starts one such worker
    level, fmt = args.log_level or config.logging.level, args.log_format or config.logging.format
    configure_logging(level, fmt)
    # A child launched from its preloaded process (forked before this) was not forked after this call.
    preload.set_setup("openfang.logs:configure_logging", level=level, fmt=fmt)
    structlog.contextvars.bind_contextvars(node=config.name, role="supervisor", pid=os.getpid())
    return Daemon(config, config_path, data_dir=args.data_dir).run()


if __name__ == "__main__":
    sys.exit(main())
