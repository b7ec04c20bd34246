"""The [http] table of cluster.toml: defaults, every problem at once, the child it adds, the missing extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openfang.control.config import HTTP_ID, HTTP_START, parse_config
from openfang.protocol.errors import ConfigError

BASE = """
[cluster]
name = "t"
data_dir = "data"
"""


def _parse(extra: str, tmp_path: Path) -> object:
    return parse_config(BASE + extra, source="cluster.toml", base_dir=tmp_path)


def test_http_config_is_off_without_a_table(tmp_path: Path) -> None:
    """No [http] table: no http child, and the defaults are loopback:8470 with no tokens."""
    cfg = _parse("", tmp_path)
    assert not cfg.http.enabled  # type: ignore[attr-defined]
    assert HTTP_ID not in [c.id for c in cfg.tree.children]  # type: ignore[attr-defined]
    assert cfg.http.base_url == "http://127.0.0.1:8470"  # type: ignore[attr-defined]


def test_http_config_table_adds_the_http_child_last(tmp_path: Path) -> None:
    """[http] on: the http child comes after the gateway and the user's children, permanent, heartbeating."""
    cfg = _parse('[http]\nlisten = "127.0.0.1:9000"\ndefault_agent = "greeter"\n', tmp_path)
    child = cfg.tree.children[-1]  # type: ignore[attr-defined]
    assert (child.id, child.start) == (HTTP_ID, HTTP_START)
    assert child.heartbeat_ms and child.restart.value == "permanent"
    assert child.args["http"].port == 9000 and child.args["http"].default_agent == "greeter"
    assert child.args["control"].endpoint.startswith("ipc://")


def test_http_config_enabled_false_adds_nothing(tmp_path: Path) -> None:
    """enabled = false keeps the table but starts no child."""
    cfg = _parse("[http]\nenabled = false\n", tmp_path)
    assert HTTP_ID not in [c.id for c in cfg.tree.children]  # type: ignore[attr-defined]


def test_http_config_non_loopback_requires_tokens(tmp_path: Path) -> None:
    """Listening beyond loopback without bearer tokens is refused, naming the key."""
    with pytest.raises(ConfigError) as err:
        _parse('[http]\nlisten = "0.0.0.0:8470"\n', tmp_path)
    assert "[http] key 'tokens'" in str(err.value) and "loopback" in str(err.value)
    cfg = _parse('[http]\nlisten = "0.0.0.0:8470"\ntokens = ["0123456789abcdef0123"]\n', tmp_path)
    assert cfg.http.tokens == ("0123456789abcdef0123",)  # type: ignore[attr-defined]


def test_http_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    """Bad listen, a short token, a lone tls_cert, a bad URL and an unknown key are reported together."""
    (tmp_path / "cert.pem").write_text("x")
    table = textwrap.dedent("""
        [http]
        listen = "nowhere"
        tokens = ["short"]
        tls_cert = "cert.pem"
        public_url = "ftp://x"
        colour = "blue"
    """)
    with pytest.raises(ConfigError) as err:
        _parse(table, tmp_path)
    text = str(err.value)
    for needle in ("key 'listen'", "key 'tokens'", "tls_cert and tls_key go together", "key 'public_url'",
                   "key 'colour'"):  # fmt: skip
        assert needle in text, (needle, text)


def test_http_config_reserves_the_http_id(tmp_path: Path) -> None:
    """A user child named 'http' clashes with the [http] face and is refused."""
    table = '[http]\n[[supervisor.children]]\nid = "http"\nstart = "a.b:c"\n'
    with pytest.raises(ConfigError, match="reserved for the \\[http\\] face"):
        _parse(table, tmp_path)


def test_http_config_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    """Without the SDKs the daemon refuses [http] and names `pip install 'openfang[http]'`."""
    config = tmp_path / "cluster.toml"
    config.write_text(BASE + "[http]\n")
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("starlette", "mcp", "a2a", "uvicorn"):
                    raise ModuleNotFoundError(name)
                return None
        sys.meta_path.insert(0, Block())
        from openfang.control.daemon import main
        sys.exit(main(["--config", {str(config)!r}, "--check"]))
    """)
    proc = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert "pip install 'openfang[http]'" in proc.stderr and "starlette" in proc.stderr, proc.stderr
