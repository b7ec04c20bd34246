"""The daemon reads a plain command line without argparse, exactly as its argparse parser reads it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openfang.control.daemon import DaemonArgs, build_parser, parse_args

PLAIN = [
    ["--config", "c.toml"],
    ["--config", "/etc/openfang/cluster.toml", "--check"],
    ["--check", "--config", "c.toml"],
    ["--config", "c.toml", "--data-dir", "/var/lib/of", "--log-level", "debug", "--log-format", "json"],
    ["--log-format", "console", "--config", "c.toml", "--log-level", "error"],
    ["--config", "", "--data-dir", ""],
]
# Read by argparse: forms the plain reading leaves to it (each answers as argparse answers).
ARGPARSE = [
    ["--config=c.toml"],
    ["--conf", "c.toml"],
    ["--config", "a.toml", "--config", "b.toml"],
    ["--config", "c.toml", "--check", "--check"],
    ["--config", "c.toml", "--log-level=info"],
]
FAILING = [
    [],
    ["--check"],
    ["--config"],
    ["--config", "c.toml", "--log-level", "loud"],
    ["--config", "c.toml", "--log-format", "xml"],
    ["--config", "c.toml", "extra"],
    ["--config", "c.toml", "--unknown", "x"],
    ["--config", "--check"],
]


def _argparse(argv: list[str]) -> DaemonArgs:
    ns = build_parser().parse_args(argv)
    return DaemonArgs(
        config=ns.config,
        check=ns.check,
        data_dir=ns.data_dir,
        log_level=ns.log_level,
        log_format=ns.log_format,
    )


@pytest.mark.parametrize("argv", PLAIN + ARGPARSE)
def test_daemon_parse_args_reads_as_argparse_reads(argv: list[str]) -> None:
    """Every accepted command line gives the same arguments as the argparse parser gives."""
    assert parse_args(argv) == _argparse(argv)


@pytest.mark.parametrize("argv", FAILING)
def test_daemon_parse_args_rejects_what_argparse_rejects(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad command line is argparse's usage error (exit 2, the same message)."""
    with pytest.raises(SystemExit) as ours:
        parse_args(argv)
    mine = capsys.readouterr().err
    with pytest.raises(SystemExit) as theirs:
        build_parser().parse_args(argv)
    assert ours.value.code == theirs.value.code == 2
    assert mine == capsys.readouterr().err and "error:" in mine


def test_daemon_parse_args_plain_line_imports_no_argparse() -> None:
    """A plain command line is read without importing argparse (its parser costs ~5 ms of every start);
    --help is argparse's."""
    code = (
        "import sys\nfrom openfang.control.daemon import parse_args\n"
        "args = parse_args(['--config', 'c.toml', '--log-level', 'info'])\n"
        "print(args.config, args.log_level, 'argparse' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "c.toml info False", done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "openfang.control.daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "usage: openfang-supervisor" in done.stdout
