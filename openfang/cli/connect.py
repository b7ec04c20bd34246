"""How ``openfang`` finds the daemon: its endpoints, whether anything listens there, and its files.

Order (the first that applies wins):

1. ``--endpoint`` (with ``--events-endpoint``);
2. ``--config`` or ``$OPENFANG_CONFIG``: the config's endpoints, with ``--data-dir`` / ``$OPENFANG_DATA_DIR``
   applied as the daemon applies it. When neither is given and the config's ipc socket is absent, the run
   record of a live daemon started from the same config (the same file, or one with the same content) is
   used instead (``make run`` starts the example cluster with a data dir of its own; see
   :mod:`openfang.control.runfile`);
3. ``$OPENFANG_ENDPOINT`` (with ``$OPENFANG_EVENTS_ENDPOINT``);
4. ``--data-dir`` / ``$OPENFANG_DATA_DIR`` alone: the default sockets under that data dir;
5. the only live daemon in the run records (several: an error naming them).

An ``ipc://`` endpoint whose socket file is absent, or refuses connections (left by a killed daemon), fails
at once with :class:`Unreachable` ("no daemon at ..."), instead of waiting for the request timeout.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openfang.control import runfile
from openfang.protocol.errors import OpenFangError


class UsageError(OpenFangError):
    """The command line (or environment) does not say enough, or says something contradictory."""

    code = "usage"


class Unreachable(OpenFangError):
    """Nothing listens at the endpoint: no daemon is running there."""

    code = "unreachable"


@dataclass(frozen=True, slots=True)
class Target:
    """Where the daemon is, and how we learned it (shown in errors)."""

    endpoint: str
    events: str | None
    how: str


def _opt(args: argparse.Namespace, name: str, env: str | None = None) -> str | None:
    value = getattr(args, name, None)
    if value:
        return str(value)
    return os.environ.get(env) or None if env else None


def resolve(args: argparse.Namespace) -> Target:
    """The daemon's endpoints from the flags and environment (see the module docstring for the order)."""
    endpoint = _opt(args, "endpoint")
    if endpoint:
        return Target(endpoint, _opt(args, "events_endpoint"), "--endpoint")
    config = _opt(args, "config", "OPENFANG_CONFIG")
    data_dir = _opt(args, "data_dir", "OPENFANG_DATA_DIR")
    if config:
        from openfang.control.config import load_config

        cfg = load_config(config, data_dir=data_dir)
        target = Target(cfg.control.endpoint, cfg.control.events, f"--config {config}")
        if data_dir is None and _socket_absent(cfg.control.endpoint):
            record = runfile.find(cfg.name)
            if record is not None and _same_file_or_content(record.config, config):
                how = f"the running daemon of {cfg.name!r} (pid {record.pid}, data dir {record.data_dir})"
                return Target(record.endpoint, record.events, how)
        return target
    env = os.environ.get("OPENFANG_ENDPOINT")
    if env:
        return Target(env, os.environ.get("OPENFANG_EVENTS_ENDPOINT"), "$OPENFANG_ENDPOINT")
    if data_dir:
        from openfang.control.config import default_control

        control = default_control(data_dir)
        return Target(control.endpoint, control.events, f"data dir {data_dir}")
    live = runfile.running()
    if len(live) == 1:
        rec = live[0]
        return Target(rec.endpoint, rec.events, f"the running daemon {rec.name!r} (pid {rec.pid})")
    if len(live) > 1:
        names = ", ".join(f"{r.name} (pid {r.pid}, {r.endpoint})" for r in live)
        raise UsageError(f"several daemons are running: {names}; pass --config or --endpoint")
    raise UsageError(
        "no daemon found: none is running for this user (no run record in "
        f"{runfile.runtime_dir()}); pass --endpoint, --config or --data-dir "
        "(or set OPENFANG_ENDPOINT / OPENFANG_CONFIG / OPENFANG_DATA_DIR)"
    )


def _same_file_or_content(a: str, b: str) -> bool:
    """Whether two configs describe the same cluster: one file, or two copies of it (another cluster that
    merely shares the name must not be reached instead of the one asked for)."""
    try:
        pa, pb = Path(a), Path(b)
        return pa.resolve() == pb.resolve() or pa.read_bytes() == pb.read_bytes()
    except OSError:
        return False


def _socket_absent(endpoint: str) -> bool:
    return endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :])


def check_reachable(endpoint: str) -> None:
    """Raise :class:`Unreachable` at once when an ``ipc://`` endpoint has nobody behind it.

    tcp:// endpoints are not probed (a connect there is cheap to retry and may need CURVE); the request
    timeout covers them.
    """
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://") :]
    if not os.path.exists(path):
        raise Unreachable(f"no daemon at {endpoint} (the socket file does not exist)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        raise Unreachable(
            f"no daemon at {endpoint} (the socket file is left over from a daemon that is gone)"
        ) from None
    except OSError as exc:
        raise Unreachable(f"no daemon at {endpoint} ({exc.strerror or exc})") from None
    finally:
        probe.close()


def curve(args: argparse.Namespace, endpoint: str) -> Any:
    """CURVE client keys for a tcp:// endpoint (``--keys-dir``, ``--key-name``), None for ipc://."""
    keys = _opt(args, "keys_dir", "OPENFANG_KEYS_DIR")
    if not endpoint.startswith("tcp://"):
        return None
    if not keys:
        raise UsageError(f"{endpoint} is tcp://: pass --keys-dir (made by 'openfang keys generate')")
    from openfang.protocol.curve import CurveClient

    return CurveClient(keys, name=getattr(args, "key_name", None) or "client")


def signer(args: argparse.Namespace) -> Any:
    """The request signer from --sign-key (or $OPENFANG_SIGN_KEY), else from the cluster config; or None."""
    from openfang.security import signing

    key_file = _opt(args, "sign_key", "OPENFANG_SIGN_KEY")
    if key_file:
        kid = _opt(args, "sign_key_id", "OPENFANG_SIGN_KEY_ID")
        alg = _opt(args, "sign_alg", "OPENFANG_SIGN_ALG") or signing.HMAC_ALG
        key = signing.load_signing_key(key_file, kid or Path(key_file).stem, alg)
        return signing.request_signer(key)
    config = _opt(args, "config", "OPENFANG_CONFIG")
    if not config:
        return None
    from openfang.control.config import load_config

    sec = load_config(config, data_dir=_opt(args, "data_dir", "OPENFANG_DATA_DIR")).security
    if not (sec.signing.enabled and sec.signing.require):
        return None
    for spec in sec.signing_keys:
        if spec.alg == signing.HMAC_ALG and os.access(spec.file, os.R_OK):
            return signing.request_signer(signing.load_signing_key(spec.file, spec.id, spec.alg))
    raise UsageError(
        f"{config}: [security.signing] requires signed requests and no HMAC key of its key ring is readable "
        "here: pass --sign-key FILE (and --sign-key-id ID)"
    )


def client(args: argparse.Namespace, with_events: bool = False) -> Any:
    """A connected :class:`~openfang.protocol.client.Client` (Unreachable at once when nothing listens)."""
    target = resolve(args)
    if with_events and not target.events:
        raise UsageError("no events endpoint: pass --config or --events-endpoint")
    check_reachable(target.endpoint)  # before importing zmq: "no daemon" answers in a few ms
    from openfang.protocol.client import Client

    return Client(
        target.endpoint,
        curve=curve(args, target.endpoint),
        timeout=args.timeout,
        events=target.events,
        signer=signer(args),
    )


@dataclass(frozen=True, slots=True)
class Places:
    """The running (or configured) cluster's files: config, data dir, memory db and writer, audit log."""

    config: Any  # ClusterConfig
    how: str

    @property
    def memory_db(self) -> str:
        return str(self.config.data_dir / "memory.db")

    @property
    def memory_writer(self) -> str:
        return f"ipc://{self.config.data_dir}/run/memory.sock"


def places(args: argparse.Namespace, verb: str) -> Places:
    """The cluster's config as the daemon runs it: asked from the daemon when one answers (so
    ``--endpoint`` and the run records work), else read from ``--config`` (with ``--data-dir``)."""
    from openfang.control.config import load_config

    try:
        target = resolve(args)
        check_reachable(target.endpoint)
    except (UsageError, Unreachable) as exc:
        reason: OpenFangError | None = exc
    else:
        reason = None
        with client(args) as c:
            status = c.request("status")
        if status.get("config"):
            cfg = load_config(str(status["config"]), data_dir=str(status.get("data_dir") or "") or None)
            return Places(cfg, f"the daemon at {target.endpoint}")
    config = _opt(args, "config", "OPENFANG_CONFIG")
    if config:
        return Places(load_config(config, data_dir=_opt(args, "data_dir", "OPENFANG_DATA_DIR")), config)
    why = f" ({reason.message})" if reason is not None else ""
    raise UsageError(f"{verb}: cannot tell where the cluster's files are{why}")
