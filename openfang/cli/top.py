"""``openfang top``: a live terminal view of a running system (tree, workers, agents, events).

The view needs the ``tui`` extra (Textual); ``--once`` prints one plain-text sample and needs nothing more.
The daemon is found like every other verb finds it (the CLI hands :func:`add_top_verb` its resolver), and
requests are signed like theirs when the cluster requires it (``--sign-key`` or the config's key ring); a
``tcp://`` endpoint needs ``--keys-dir`` (CURVE), for requests and for the event stream alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openfang.protocol.curve import CurveClient
from openfang.protocol.errors import ConfigError

if TYPE_CHECKING:
    from openfang.cli.top_feed import Feed

# (control endpoint, events endpoint or None) from the command line; the request signer (or None).
Resolve = Callable[[argparse.Namespace], tuple[str, str | None]]
SignerFor = Callable[[argparse.Namespace], Any]

INSTALL_HINT = (
    "openfang top needs the Textual terminal UI library, from the 'tui' extra:\n"
    "    pip install 'openfang[tui]'      (in a checkout: pip install -e '.[tui]', or make install)\n"
    "'openfang top --once' prints one plain-text sample without it."
)

DESCRIPTION = """\
A live view of a running system, refreshed every --interval seconds: the supervision tree (pid, state,
restarts, RSS, uptime), the agent workers (CPU % when the daemon runs on this host, RSS, agents, busy
agents, queued messages), the agents (state, activity, worker, messages, msgs/s, inbox, fuel used,
memory) and a tail of the event stream.

keys: up/down or j/k select an agent; s suspend; r resume; K kill (asks y/n); h hibernate; w wake;
/ filter the agents (words match id, name, worker, state or service; field:text matches one field, e.g.
state:suspended; !word excludes; enter keeps the filter, escape clears it); q quit.

Errors the daemon answers (e.g. unknown_type for an action it does not know) show in the status line;
while no daemon answers, the header says "no daemon at <endpoint>" and top keeps retrying.
"""


def curve_keys(args: argparse.Namespace, endpoint: str) -> CurveClient | None:
    """CURVE client keys for a ``tcp://`` endpoint (``--keys-dir``/``$OPENFANG_KEYS_DIR``), None for ipc."""
    if not endpoint.startswith("tcp://"):
        return None
    keys = getattr(args, "keys_dir", None) or os.environ.get("OPENFANG_KEYS_DIR")
    if not keys:
        raise ConfigError(f"{endpoint} is tcp://: pass --keys-dir (made by 'openfang keys generate')")
    return CurveClient(keys, name=getattr(args, "key_name", None) or "client")


def cmd_top(args: argparse.Namespace, *, resolve: Resolve, signer: SignerFor) -> int:
    """a live view of the running system: tree, workers, agents, events; keys act on agents"""
    from openfang.cli.top_feed import Feed

    if args.interval <= 0:
        raise ConfigError(f"--interval must be more than 0 seconds, got {args.interval}")
    endpoint, events = resolve(args)
    curve = curve_keys(args, endpoint)
    feed = Feed(endpoint, curve=curve, timeout=min(args.timeout, 5.0), events=events, signer=signer(args))
    if args.once or args.json:
        return _once(args, feed)
    try:
        from openfang.cli.top_view import TopApp
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("textual", "rich"):
            raise
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("openfang top: needs a terminal ('openfang top --once' prints one sample)", file=sys.stderr)
        return 2
    TopApp(feed, curve=curve, interval=args.interval).run()
    return 0


def _once(args: argparse.Namespace, feed: Feed) -> int:
    from openfang.cli.top_data import text_report

    try:
        feed.sample()
        # msgs/s and CPU % need two readings: the printed sample is the second, a moment later.
        time.sleep(min(args.interval, 1.0))
        snapshot = feed.sample()
    finally:
        feed.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(snapshot), indent=2, sort_keys=True))
    else:
        print(text_report(snapshot, feed.endpoint))
    return 0


def add_top_verb(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    *,
    resolve: Resolve,
    signer: SignerFor,
) -> None:
    """Register ``top`` on the CLI's verb parser.

    ``resolve`` and ``signer`` are the CLI's own ways to find the daemon and to sign requests, handed in
    (rather than imported from :mod:`openfang.cli.main`, which imports this module) so that ``top``
    connects exactly as every other verb does.
    """
    p = sub.add_parser(
        "top",
        parents=[common],
        help=(cmd_top.__doc__ or "").strip(),
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument(
        "--once",
        action="store_true",
        help="print one sample as text and exit (--json: as JSON); needs no terminal and no Textual",
    )
    p.set_defaults(handler=functools.partial(cmd_top, resolve=resolve, signer=signer))
