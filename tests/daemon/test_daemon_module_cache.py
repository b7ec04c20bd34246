"""Compiled guests persist in the data dir: a restarted daemon maps them instead of compiling again."""

from __future__ import annotations

import stat

from daemon_harness import ROOT, Cluster

# A module file, not a built-in guest: those may come compiled with the package (`make install`,
# workers/sandbox/shipped.py), and then a fresh data dir's first spawn of one is warm already.
GREETER = ROOT / "examples" / "agents" / "wat" / "greeter.wat"
MANIFEST = f'[agent]\nname = "cached"\nmodule = "{GREETER}"\n'


def test_daemon_restart_spawns_warm_from_the_module_cache_in_its_data_dir(
    make_cluster: type[Cluster],
) -> None:
    """First daemon: the spawn compiles (cold) and leaves a private .cwasm under data/modules; after a
    restart on the same data dir, a spawn of the same module loads that file (warm) with no compile."""
    c = make_cluster(workers=1).start()
    first = c.ok("agent.spawn", {"manifest": MANIFEST})
    assert first["spawn"] == "cold", first
    c.ok("agent.kill", {"agent_id": first["agent_id"]})  # nothing to restore: the next spawn is a fresh one
    assert c.stop() == 0
    folder = c.data_dir / "modules"
    (artifact,) = folder.glob("*.cwasm")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(artifact.stat().st_mode) == 0o600
    c.start()
    again = c.ok("agent.spawn", {"manifest": MANIFEST})
    assert again["spawn"] == "warm" and again["agent_id"] != first["agent_id"], again
    assert "hello" in c.ok("agent.send", {"agent_id": again["agent_id"], "text": "hi"})["reply"]
    assert c.stop() == 0
