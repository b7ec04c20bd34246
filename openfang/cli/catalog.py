"""``openfang tools list`` and ``openfang models list``: what a manifest can name, offline (no daemon)."""

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


def cmd_models_list(args: argparse.Namespace) -> int:
    """list the model presets: provider name, protocol, base URL, key variable (no daemon needed)"""
    from openfang.workers.llm.presets import PRESETS

    if args.json:
        rows = [
            {
                "provider": p.name,
                "protocol": p.protocol,
                "base_url": p.base_url or None,
                "api_key_env": p.key_env,
                "local": p.local,
                "notes": p.notes,
            }
            for p in PRESETS
        ]
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'PROVIDER':<11} {'PROTOCOL':<10} {'KEY VARIABLE':<22} BASE URL / NOTES")
    for p in PRESETS:
        key = p.key_env or ("-" if p.local else "")
        where = p.base_url or "(give base_url)"
        print(f"{p.name:<11} {p.protocol:<10} {key:<22} {where}{'  ' + p.notes if p.notes else ''}")
    print('\nuse one as [agent.model] provider = "<provider>" with name = "<model>"')
    return 0


def add_catalog_verbs(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``tools list`` and ``models list`` on the CLI's verb parser."""
    tools = sub.add_parser("tools", help="the built-in tools agents can use")
    tools_sub = tools.add_subparsers(dest="tools_op", required=True)
    p = tools_sub.add_parser("list", parents=[common], help=(cmd_tools_list.__doc__ or "").strip())
    p.set_defaults(handler=cmd_tools_list)
    models = sub.add_parser("models", help="the model presets agents can name")
    models_sub = models.add_subparsers(dest="models_op", required=True)
    p = models_sub.add_parser("list", parents=[common], help=(cmd_models_list.__doc__ or "").strip())
    p.set_defaults(handler=cmd_models_list)
