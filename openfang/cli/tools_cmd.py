"""``openfang tools list``: the built-in tools an agent manifest can name, offline (no daemon needed)."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_tools_list(args: argparse.Namespace) -> int:
    """list the built-in tools: name, permission, description (no daemon needed)"""
    from openfang.workers.tools.registry import builtin_tools

    tools = sorted(builtin_tools(), key=lambda t: (t.permission, t.name))
    if args.json:
        rows = [
            {"name": t.name, "permission": t.permission, "description": t.description, "schema": t.schema}
            for t in tools
        ]
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    width = max(len(t.name) for t in tools)
    pwidth = max(len(t.permission) for t in tools)
    print(f"{'TOOL':<{width}}  {'PERMISSION':<{pwidth}}  DESCRIPTION")
    for t in tools:
        print(f"{t.name:<{width}}  {t.permission:<{pwidth}}  {t.description}")
    print(f'\n{len(tools)} tools; an agent manifest grants them by name: tools = ["calc", "sql_query"]')
    return 0


def add_tools_verbs(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``tools list`` on the CLI's verb parser."""
    tools = sub.add_parser("tools", help="the built-in tools agents can use")
    tools_sub = tools.add_subparsers(dest="tools_op", required=True)
    p = tools_sub.add_parser("list", parents=[common], help=(cmd_tools_list.__doc__ or "").strip())
    p.set_defaults(handler=cmd_tools_list)
