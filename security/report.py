"""``openfang security report``: each of the sixteen layers, whether it is on, and its configuration.

:func:`security_report` returns plain JSON-able dicts, one per layer, in layer order. Secrets never appear:
key *ids* and key *file paths* are shown, never key material (the config never holds material anyway).

``enabled`` is true only where the layer is actually enforced by the running system; ``config.enforced_by``
names the processes that enforce it and where, and ``config.not_enforced`` lists configured parts that no
process enforces yet (so the report never claims more than the code does).
"""

from __future__ import annotations

from typing import Any

from openfang.security.config import SecurityConfig
from openfang.security.ratelimit import Limit


def _limit(lim: Limit) -> dict[str, float] | str:
    return "unlimited" if lim.unlimited else {"rate_per_s": lim.rate, "burst": lim.burst}


def _sorted(values: Any) -> list[str] | None:
    return None if values is None else sorted(values)


# Where each layer is enforced (by layer number): kept beside the code that does it, see docs/security.md.
ENFORCED_BY: dict[int, str] = {
    1: "gateway: every client frame (size, depth, keys, text)",
    2: "workers: agent.send text (action), tool results and LLM output (output_action)",
    3: "gateway: requests per client identity and in total; workers: per-agent requests, LLM tokens, "
    "tool calls",
    4: "gateway: every client frame when keys are configured",
    5: "workers: fuel per refuel interval and call deadline (defaults and maxima checked at spawn)",
    6: "workers: linear-memory cap per agent (defaults and maxima checked at spawn)",
    7: "workers: module imports checked before instantiation",
    8: "workers: http_fetch SSRF guard, per-agent scoped file root {data_dir}/agents/<id>/files",
    9: "workers: tools, memory_read scopes, agent_send/agent_spawn targets, max_children",
    10: "workers: every outgoing request of a tool (url, headers, body)",
    11: "workers: agent replies, tool results, LLM output; every process: audit records and logs",
    12: "daemon, gateway, workers: one hash chain in the audit file",
    13: "workers: signed manifests verified at spawn (required with require_signature); the sandbox checks "
    "module_sha256 when a manifest pins it",
    14: "daemon: package and configured files re-hashed every interval_s",
    15: "workers: Ed25519 key per agent; agent_send is signed by the host and verified before delivery",
    16: "workers: manifest version per name checked at spawn, recorded after",
}


UNKEYED_WARNING = (
    "unkeyed chain: anyone who can write the audit file can rebuild the whole chain and pass "
    "'audit verify' (remove keyed = false, or set key_file)"
)


def _audit(c: SecurityConfig) -> dict[str, Any]:
    keyed = c.audit.key_file is not None
    out: dict[str, Any] = {"path": c.audit.path, "hmac": keyed, "key_file": c.audit.key_file}
    out["refusals"] = {
        "window_s": c.audit.refusals.window_s,
        "full_records_per_s": c.audit.refusals.max_writes_per_s,
        "burst": c.audit.refusals.burst,
    }
    if not keyed:
        out["warning"] = UNKEYED_WARNING
    return out


def security_report(config: SecurityConfig) -> list[dict[str, Any]]:
    """One entry per layer: ``{"layer", "name", "module", "enabled", "config"}``."""
    c = config
    sb = c.sandbox
    signing_on = c.signing.enabled and bool(c.signing_keys or c.signing.require)
    rows: list[tuple[str, str, bool, dict[str, Any]]] = [
        (
            "input validation",
            "validation",
            True,
            {
                "max_frame_bytes": c.validation.max_frame_bytes,
                "max_text": c.validation.max_text,
                "max_depth": c.validation.max_depth,
                "max_keys": c.validation.max_keys,
                "max_list": c.validation.max_list,
                "max_nodes": c.validation.max_nodes,
            },
        ),
        (
            "prompt-injection detection",
            "injection",
            c.injection.enabled,
            {
                "threshold": c.injection.threshold,
                "block_threshold": c.injection.block_threshold,
                "action": c.injection.action,
                "output_action": c.injection.output_action,
            },
        ),
        (
            "rate limiting",
            "ratelimit",
            c.ratelimit.enabled,
            {
                "client_requests": _limit(c.ratelimit.client_requests),
                "global_requests": _limit(c.ratelimit.global_requests),
                "client_identity": "signing key id, else CURVE client, else ipc peer uid",
                "agent_requests": _limit(c.ratelimit.agent_requests),
                "agent_tokens": _limit(c.ratelimit.agent_tokens),
                "agent_tool_calls": _limit(c.ratelimit.agent_tool_calls),
            },
        ),
        (
            "request signing",
            "signing",
            signing_on,
            {
                "require": c.signing.require,
                "max_skew_s": c.signing.max_skew,
                "keys": [{"id": k.id, "alg": k.alg, "file": k.file} for k in c.signing_keys],
            },
        ),
        ("fuel metering", "capabilities", True, {"fuel_default": sb.fuel_default, "fuel_max": sb.fuel_max}),
        (
            "memory caps",
            "capabilities",
            True,
            {"memory_default_mb": sb.memory_default_mb, "memory_max_mb": sb.memory_max_mb},
        ),
        (
            "host-function allowlist",
            "capabilities",
            True,
            {"allow": sorted(sb.allow), "deny": sorted(sb.deny)},
        ),
        (
            "sandbox boundary (network, files)",
            "boundary",
            True,
            {
                "allow_hosts": list(c.network.allow_hosts),
                "allow_private": c.network.allow_private,
                "filesystem": "per-agent scoped root, no symlinks, no '..'",
            },
        ),
        ("per-agent permissions", "permissions", c.permissions.enabled, {"default": "deny"}),
        (
            "data-exfiltration detection",
            "exfil",
            c.exfil.enabled,
            {
                "block_sinks": sorted(c.exfil.block_sinks),
                "secret_kinds": _sorted(c.exfil.secret_kinds) or "all",
                "pii": sorted(c.exfil.pii),
                "encoded_taint": c.exfil.detect_encoded_taint,
                "split_secrets": {
                    "window_s": c.exfil.split_window_s,
                    "window_bytes": c.exfil.split_window_bytes,
                    "min_piece": c.exfil.split_min_piece,
                    "share": c.exfil.split_share,
                },
            },
        ),
        (
            "output filtering",
            "redact",
            c.redact.enabled,
            {
                "secret_kinds": _sorted(c.redact.secret_kinds) or "all",
                "pii": sorted(c.redact.pii),
                "sensitive_keys": c.redact.redact_sensitive_keys,
            },
        ),
        ("audit logging", "audit", True, _audit(c)),
        (
            "binary attestation",
            "attestation",
            True,  # the digest pin is checked by the sandbox whatever the config says
            {
                "require_pin": c.attestation.require_pin,
                "require_signature": c.attestation.require_signature,
                "publishers": sorted(c.attestation.trusted_publishers),
                "not_enforced": ["require_pin"],
            },
        ),
        (
            "runtime integrity",
            "integrity",
            c.integrity.enabled,
            {
                "interval_s": c.integrity.interval_s,
                "packages": list(c.integrity.packages),
                "files": list(c.integrity.files),
            },
        ),
        ("agent identity", "identity", c.identity.enabled, {"max_skew_s": c.identity.max_skew_s}),
        ("rollback protection", "rollback", c.rollback.enabled, {"state": c.rollback.state}),
    ]
    return [
        {
            "layer": i,
            "name": name,
            "module": f"openfang.security.{module}",
            "enabled": enabled,
            "config": {**cfg, "enforced_by": ENFORCED_BY[i]},
        }
        for i, (name, module, enabled, cfg) in enumerate(rows, start=1)
    ]
