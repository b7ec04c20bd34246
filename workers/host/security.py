"""The security layers an agent host enforces, assembled once per worker from the cluster's ``[security]``.

Private to the agent host (``agent_host`` / ``_host_services`` call it at each boundary):

- spawn: rollback (16), capabilities (5-7: limits and the host-function allowlist), permissions (9),
  identity (15: the key itself is made when the agent first signs), scoped files (8), secret taint for
  exfiltration (10);
- ``agent.send``: per-agent request rate (3), injection in the user's text (2);
- LLM and tool calls: token and tool-call rates (3), injection in tool/LLM output (2), redaction (11);
- every refusal is a ``Denied`` / ``RateLimitExceeded`` *and* a record in the audit log (12).

:class:`HostAudit` is the audit sink: the hash-chained :class:`~openfang.security.audit.AuditLog` of this
process (its SQLite connection belongs to the worker's thread, so records made on tool threads are queued
and written by the loop on its next turn) plus an optional plain callback (the worker's log line).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from openfang.protocol.errors import OpenFangError
from openfang.security._errors import Denied
from openfang.security.attestation import Attestor
from openfang.security.audit import AuditLog
from openfang.security.capabilities import CapabilityPolicy
from openfang.security.config import SecurityConfig
from openfang.security.exfil import ExfilGuard, TaintTracker
from openfang.security.identity import AgentIdentity, AgentMessageVerifier, IdentityRegistry
from openfang.security.injection import InjectionGuard, Source
from openfang.security.permissions import AgentPermissions, PermissionChecker
from openfang.security.ratelimit import RateLimiter
from openfang.security.redact import Redactor
from openfang.security.rollback import VersionStore
from openfang.workers.manifest import AgentManifest

log = structlog.get_logger("openfang.workers.security")


class HostAudit:
    """``append(kind, **fields)`` into the audit log from any thread; the owner thread does the writing."""

    def __init__(self, log_: AuditLog | None, also: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.log = log_
        self._also = also
        self._owner = threading.get_ident()
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self.failures = 0

    def append(self, kind: str, /, **fields: Any) -> None:
        if threading.get_ident() != self._owner:
            self._queue.append((kind, fields))  # deque.append is atomic: no lock needed
            return
        self.flush()
        self._write(kind, fields)

    def flush(self) -> None:
        """Write the records queued by other threads (call from the owner thread)."""
        while self._queue:
            kind, fields = self._queue.popleft()
            self._write(kind, fields)

    def _write(self, kind: str, fields: dict[str, Any]) -> None:
        if self.log is not None:
            try:
                self.log.append(kind, **fields)
            except Exception:  # a full disk must not take the agents down; the log line below remains
                self.failures += 1
                log.exception("audit_write_failed", kind=kind)
        if self._also is not None:
            # A layer's own "kind" field (e.g. permissions.denied kind=send) must not replace the record's.
            self._also({"kind": kind, **{("kind_" if k == "kind" else k): v for k, v in fields.items()}})

    def close(self) -> None:
        self.flush()
        if self.log is not None:
            self.log.close()


@dataclass(kw_only=True)
class AgentGuard:
    """The per-agent security state the host keeps beside a HostedAgent."""

    agent_id: str
    name: str
    permissions: AgentPermissions
    identities: IdentityRegistry = field(repr=False)  # where the agent's public key is registered
    exfil: ExfilGuard | None
    fs_root: Path | None
    parent: str | None = None
    max_children: int = 8
    children: set[str] = field(default_factory=set)
    refusal: OpenFangError | None = None  # the security error that ended the current message, if any
    _identity: AgentIdentity | None = field(default=None, init=False, repr=False)

    @property
    def identity(self) -> AgentIdentity:
        """The agent's own Ed25519 key (layer 15), made and its public half registered the first time it
        is needed: the key only signs the agent's messages to other agents, and an Ed25519 key pair costs
        ~60 us, most of a warm spawn's security work, so an agent that never messages another never makes
        one. Each agent still gets a key of its own; nothing reads it before its first signature."""
        if self._identity is None:
            identity = AgentIdentity.generate(self.agent_id)
            self.identities.register(self.agent_id, identity.public_bytes())
            self._identity = identity
        return self._identity


class HostSecurity:
    """Every agent-side layer of one worker. Not thread-safe except where a method says so."""

    def __init__(self, config: SecurityConfig, audit: HostAudit, *, data_dir: Path | None) -> None:
        self.config = config
        self.audit = audit
        self.data_dir = data_dir
        c = config
        self.capabilities = CapabilityPolicy(c.sandbox, audit=audit)
        self.injection = InjectionGuard(c.injection, audit=audit) if c.injection.enabled else None
        self.limiter = RateLimiter(c.ratelimit, audit=audit) if c.ratelimit.enabled else None
        self.permissions = PermissionChecker(audit=audit) if c.permissions.enabled else None
        self.identities = IdentityRegistry(audit=audit)
        self.verifier = AgentMessageVerifier(self.identities, max_skew=c.identity.max_skew_s, audit=audit)
        self._versions: VersionStore | None = None
        self._versions_at: Path | None = None  # layer 16's state, opened on first use (see versions)
        if c.rollback.enabled and "{data_dir}" not in c.rollback.state:
            self._versions_at = Path(c.rollback.state)
            self._versions_at.parent.mkdir(parents=True, exist_ok=True)
        self.redactor = Redactor(c.redact) if c.redact.enabled else None
        # Layer 13: signatures are checked here; the digest pin is the sandbox's (require_pin is not
        # enforced: builtin and local modules run unpinned).
        self.attestor = (
            Attestor(dataclasses.replace(c.attestation, require_pin=False), audit=audit)
            if c.attestation.enabled
            else None
        )
        self.guards: dict[str, AgentGuard] = {}
        self._limiter_lock = threading.Lock()  # charges come from the loop and from tool threads

    @property
    def versions(self) -> VersionStore | None:
        """Layer 16's version state (None when off), opened on first use: in a fresh data dir the first
        worker makes the file (two fsyncs). A worker opens it ahead, as its last warm-up steps
        (:meth:`warm_up_versions`), while it waits for its first request. A state that cannot be opened
        raises ConfigError (naming the file) at every use, so every spawn is refused with it, and no spawn
        skips the check."""
        if self._versions is None and self._versions_at is not None:
            self._versions = VersionStore(self._versions_at, audit=self.audit)
        return self._versions

    def warm_up_versions(self) -> list[Callable[[], None]]:
        """Two steps for a worker's warm-up (none when layer 16 is off): open the state (in a fresh data
        dir: make the file), then pay its log's first-commit fsyncs (``VersionStore.warm_up``), which the
        first spawn's accept would wait for otherwise. Run on the loop's thread, between requests: opened on
        a thread behind the loop instead, the opening's dozen GIL hand-overs each waited up to the switch
        interval (5 ms) behind the loop's own warm-up, and a cold start's first spawn then waited 2-12 ms
        for the thread (stamped). A step that fails only logs: the spawn that needs the state opens it and
        reports the problem itself."""
        if self._versions_at is None:
            return []

        def open_state() -> None:
            try:
                _ = self.versions
            except OpenFangError as exc:
                log.info("version_state_not_opened", path=str(self._versions_at), error=str(exc))

        def first_commit() -> None:
            store = self._versions
            if store is None:
                return
            try:
                store.warm_up(wait=False)  # another worker's accept holds the lock: the first accept pays
            except Exception as exc:  # only an optimisation: the first accept makes the log instead
                error = f"{type(exc).__name__}: {exc}"
                log.info("version_state_warm_up_failed", path=str(self._versions_at), error=error)

        return [open_state, first_commit]

    # -- spawn ---------------------------------------------------------------------------------------------
    def check_version(self, manifest: AgentManifest, digest: str) -> bool:
        """Layer 16: refuse a manifest older than one accepted before under the same name. True when this
        version and digest are the accepted ones already (:meth:`accept_version` then has nothing to do)."""
        if self.versions is None:
            return True
        cur = self.versions.current(manifest.name)
        if cur is not None and cur[1] == str(manifest.version) and cur[2] == digest:
            return True  # the accepted version and bytes (a pool's spawns): one read, as check would do
        digest = self.recorded_digest(manifest, digest, cur)
        cur = self.versions.check(manifest.name, manifest.version, digest)
        return cur is not None and cur[1] == str(manifest.version) and cur[2] == digest

    @staticmethod
    def recorded_digest(
        manifest: AgentManifest, digest: str, cur: tuple[tuple[int, ...], str, str] | None
    ) -> str:
        """The digest layer 16 checks a spawn under: ``digest``, or for an unpinned built-in module whose
        manifest version was recorded with an earlier OpenFANG release's text of the same built-in, that
        recorded digest. The built-in's bytes changed with the runtime, not with the manifest: refusing the
        same version as "accepted before with different bytes" would stop every agent of a built-in at an
        upgrade of OpenFANG. A different digest that is not such a text is still refused. ``cur``: the
        version state's record for the manifest's name."""
        if manifest.module_sha256 or not manifest.module.startswith("builtin:"):
            return digest
        if cur is None or cur[2] == digest or cur[1] != str(manifest.version):
            return digest
        from openfang.workers.sandbox.builtin_guests import earlier_text

        return cur[2] if earlier_text(manifest.module.removeprefix("builtin:"), cur[2]) else digest

    def attest(self, manifest: AgentManifest, raw: Mapping[str, Any]) -> None:
        """Layer 13: a signed manifest must verify under a trusted publisher (every manifest must be signed
        when ``require_signature``); the signature covers the whole manifest, module_sha256 included."""
        if self.attestor is None:
            return
        if "signature" not in raw and not self.config.attestation.require_signature:
            return  # nothing to check: spare reading the module bytes
        self.attestor.attest(manifest.name, module_bytes(manifest), raw)

    def accept_version(self, manifest: AgentManifest, digest: str, *, accepted: bool = False) -> None:
        """Record the manifest's version as accepted; ``accepted``: :meth:`check_version` of this spawn said
        it is already (spares reading the version state a second time)."""
        if self.versions is None or accepted:
            return
        cur = self.versions.current(manifest.name)
        digest = self.recorded_digest(manifest, digest, cur)
        if cur is not None and cur[1] == str(manifest.version) and cur[2] == digest:
            return  # already the accepted version: spare the write (and its fsync) on every spawn
        self.versions.accept(manifest.name, manifest.version, digest)

    def admit(self, manifest: AgentManifest, agent_id: str, *, parent: str | None = None) -> AgentGuard:
        """The agent's guard: permissions (no escalation past ``parent``), identity key, files, taint."""
        p = manifest.permissions
        perms = AgentPermissions(
            agent_id=agent_id,
            tools=frozenset(manifest.tools),
            memory_read=frozenset(p.memory_read),
            memory_write=frozenset(p.memory_write),
            send=frozenset(p.send),
            spawn=frozenset(p.spawn),
        )
        if parent is not None and self.permissions is not None:
            self.permissions.check_spawn(parent, manifest.name, perms)
        exfil = None
        names = list(manifest.secret_env)
        api_env = (manifest.model.raw or {}).get("api_key_env") if manifest.model else None
        if isinstance(api_env, str):
            names.append(api_env)
        if self.config.exfil.enabled and names:  # secrets to taint (and to redact) from now on
            exfil = self._exfil_guard()
            tainted = exfil.taint.taint_from_env(names, os.environ)
            if self.redactor is not None:
                self.redactor.add_known(*(os.environ[n] for n in tainted))
        guard = AgentGuard(
            agent_id=agent_id,
            name=manifest.name,
            permissions=perms,
            identities=self.identities,
            exfil=exfil,
            fs_root=self._fs_root(agent_id, manifest),
            parent=parent,
            max_children=p.max_children,
        )
        if self.permissions is not None:
            self.permissions.register(perms)
        self.guards[agent_id] = guard
        if parent is not None and parent in self.guards:
            self.guards[parent].children.add(agent_id)
        return guard

    def release(self, agent_id: str) -> None:
        guard = self.guards.pop(agent_id, None)
        self.identities.unregister(agent_id)
        if self.permissions is not None:
            self.permissions.unregister(agent_id)
        if guard is not None and guard.parent in self.guards:
            self.guards[guard.parent].children.discard(agent_id)

    def _fs_root(self, agent_id: str, manifest: AgentManifest) -> Path | None:
        """Layer 8: ``{data_dir}/agents/<agent_id>/files`` (None without a data dir), created at spawn for
        an agent with file tools, else when it first uses a tool (spawning other agents costs no I/O)."""
        if self.data_dir is None:
            return None
        root = Path(f"{self.data_dir}/agents/{agent_id.replace('/', '_')}/files")  # one parse, not 3 joins
        if any(t.startswith("fs") for t in manifest.tools):
            self.ensure_fs_root(root)
        return root

    @staticmethod
    def ensure_fs_root(root: Path | None) -> Path | None:
        """Create the agent's root (and its parents) 0700: no other user may look into an agent's files."""
        if root is not None and not root.is_dir():
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            for d in (root, root.parent, root.parent.parent):
                os.chmod(d, 0o700)
        return root

    # -- traffic -------------------------------------------------------------------------------------------
    def charge(self, agent_id: str, *, requests: int = 0, tokens: int = 0, tool_calls: int = 0) -> None:
        """Layer 3 for one agent (thread-safe); raises RateLimitExceeded (``rate_limited``)."""
        limiter = self.limiter
        if limiter is None:
            return
        if limiter.agent_limited:
            with self._limiter_lock:
                limiter.charge(agent=agent_id, requests=requests, tokens=tokens, tool_calls=tool_calls)
        elif requests < 0 or tokens < 0 or tool_calls < 0:  # the limiter's unit check names the bug
            limiter.charge(agent=agent_id, requests=requests, tokens=tokens, tool_calls=tool_calls)
        # else no agent bucket has a limit: the charge would read and take nothing, and cannot be refused

    def check_input(self, agent_id: str, text: str, *, source: Source = "user") -> str:
        """Layer 2 on text entering an agent: the text to pass on; Denied when the action is block."""
        if self.injection is None:
            return text
        # A flagged text goes on with a warning line for the model in front (model_text); a block raised.
        return self.injection.check_text(text, source=source, agent_id=agent_id)

    def check_output(self, agent_id: str, text: str, *, source: Source) -> str:
        """Layer 2 on tool/LLM output flowing back into the conversation (``output_action``)."""
        if self.injection is None or not text:
            return text
        return self.injection.check_text(text, source=source, agent_id=agent_id)

    def check_model_text(self, agent_id: str, text: str) -> str:
        """``redact(check_output(agent_id, text, source="llm"))`` in one step: the content filter of every
        model answer (layer 2 on the answer, then layer 11 on what passed)."""
        if not text:
            return text
        injection = self.injection
        if injection is not None:
            text = injection.check_text(text, source="llm", agent_id=agent_id)
        redactor = self.redactor
        if redactor is None or not text:
            return text
        return redactor.redact_text(text)

    def redact(self, text: str) -> str:
        """Layer 11: secrets and PII out of what leaves an agent (replies, tool results)."""
        if self.redactor is None or not text:
            return text
        return self.redactor.redact_text(text)

    def _exfil_guard(self) -> ExfilGuard:
        taint = TaintTracker(encoded=self.config.exfil.detect_encoded_taint)
        return ExfilGuard(self.config.exfil, taint=taint, audit=self.audit)

    def egress_check(self, agent_id: str) -> Callable[[str, str, Mapping[str, str], str | None], None] | None:
        """Layer 10: the ToolContext hook run before every outgoing request of the agent's tools.

        An agent given no secrets gets its exfiltration guard (the detectors, its window of recent pieces)
        here, with its first tool context, not at spawn: ~1.2 KB and ~8 us an agent that never calls a tool.
        """
        guard = self.guards.get(agent_id)
        if guard is None:
            return None
        if guard.exfil is None and self.config.exfil.enabled:
            guard.exfil = self._exfil_guard()
        exfil = guard.exfil
        if exfil is None:
            return None

        def check(tool: str, url: str, headers: Mapping[str, str], body: str | None) -> None:
            exfil.check_tool_call(
                agent_id=agent_id, tool=tool, sink="network", url=url, headers=headers, body=body
            )

        return check

    def memory_scope(self, agent_id: str, owners: list[str]) -> list[str]:
        """Layer 9: the owners ``agent_id`` asked to read, all permitted (else Denied, audited)."""
        if self.permissions is None:
            return owners
        for owner in owners:
            self.permissions.check_memory_read(agent_id, owner)
        return owners

    def check_send(self, sender: str, target_id: str, target_name: str) -> None:
        """Layer 9: may ``sender`` message this agent (by id or manifest name)?"""
        if self.permissions is None:
            return
        perms = self.permissions.get(sender)
        if perms.allows("send", target_id) or perms.allows("send", target_name):
            return
        self.permissions.check_send(sender, target_id)  # raises and audits

    def check_spawn_budget(self, parent: str) -> None:
        guard = self.guards.get(parent)
        if guard is not None and len(guard.children) >= guard.max_children:
            self.audit.append(
                "permissions.denied",
                agent_id=parent,
                kind="spawn",
                target="max_children",
                children=len(guard.children),
            )
            raise Denied(
                f"agent {parent!r} already has {len(guard.children)} children (max_children "
                f"{guard.max_children})",
                layer="permissions",
                reason="spawn_limit",
            )

    def close(self) -> None:
        if self._versions is not None:
            self._versions.close()
        self._versions = None
        self.audit.close()


def module_bytes(manifest: AgentManifest) -> bytes:
    """The bytes a manifest's module names (the builtin guest's source for ``builtin:``)."""
    path = manifest.module_path()
    if path is None:
        from openfang.workers.sandbox.builtin_guests import builtin_source

        return builtin_source(manifest.module.removeprefix("builtin:"))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Denied(
            f"cannot read module {path}: {exc.strerror}", layer="attestation", reason="unreadable"
        ) from None
