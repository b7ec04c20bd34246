"""The agent host's record of one agent: an explicit state, what it is doing, and what it is owed.

One :class:`HostedAgent` per agent, owned by the :class:`~openfang.workers.host.agent_host.AgentHost`; its
collaborators (services, agent traffic) read it but never change its lifecycle fields.

Lifecycle (``phase``)::

    STARTING ──init ok──> READY ──crash──> RESTARTING ──init ok──> READY
        │                   │                   │
        └──── given up / killed / temporary ────┴──> (removed: the record is dropped)

``suspended`` is orthogonal (the sandbox is not polled; messages wait in ``inbox``). So is ``hibernated``
(a READY agent with no sandbox: its guest state is in ``snapshot`` until written, then in its snapshot file;
the next message or ``agent.wake`` restores it into a new sandbox).

Memory: a worker holds up to tens of thousands of these, most of them idle, so the record is slotted and
what only a busy agent needs is made when first used and let go again: the inbox (a deque, ~0.7 KiB empty)
exists only while messages wait, the parsed-chat cache only once the agent calls its model. Per-agent
mutable state is never shared between records; what agents of one manifest have in common (the parsed
manifest, the manifest text) is shared by reference.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from openfang.protocol.bodies import AgentMove, AgentSend
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import OpenFangError
from openfang.supervisor.restart import RestartWindow  # OTP's add_restart, shared with the tree
from openfang.workers.host import jobs
from openfang.workers.manifest import AgentManifest
from openfang.workers.sandbox.instance import Sandbox


class Phase(StrEnum):
    STARTING = "starting"  # spawned, agent_init not finished; the spawn reply waits for it
    READY = "ready"  # answering messages (idle or busy)
    RESTARTING = "restarting"  # crashed, a fresh instance is in agent_init; messages wait in the inbox


# A request, its body as the catalogue typed it, its payload (the guest's JSON) and the message that payload
# is the JSON of, when its round trip is exact (Sandbox.seed), else None.
Message = tuple[Envelope, AgentSend, bytes, dict[str, Any] | None]
_NO_MESSAGES: tuple[Message, ...] = ()  # the inbox of every agent with nothing waiting (immutable)


@dataclass(kw_only=True, slots=True)
class HostedAgent:
    """One agent this worker hosts: its manifest, sandbox, LLM provider, restart window, phase and inbox."""

    agent_id: str
    manifest: AgentManifest
    manifest_text: str
    sandbox: Sandbox
    provider: Any
    window: RestartWindow
    phase: Phase = Phase.STARTING
    created_at: float = field(default_factory=time.time)
    restarts: int = 0
    # Messages waiting (see inbox / post / take): None while none waits, as for every idle agent.
    _inbox: deque[Message] | None = field(default=None, init=False, repr=False)
    current: Envelope | None = None  # the message in progress
    current_send: AgentSend | None = None  # its typed body (session, stream)
    spawn_env: Envelope | None = None  # the spawn to answer once agent_init is done
    usage: dict[str, int] = field(default_factory=dict)
    # Every LLM call of this agent on this worker: llm_calls, prompt/completion_tokens, cost_usd (if priced).
    llm_usage: dict[str, Any] = field(default_factory=dict)
    fuel_at_start: int = 0
    _chat_cache: jobs.ChatCache | None = field(default=None, init=False, repr=False)
    tool_ctx: Any = None
    grant: Any = None  # the security.capabilities grant, reapplied on every restart
    tool_specs: tuple[Any, ...] | None = None
    model_plan: Any = None  # services.ModelPlan: what its model calls share (made on the first one)
    tool_ctx_for: Sandbox | None = None
    guard: Any = None  # security.AgentGuard when the host enforces the security layers
    session: str = ""  # the session of the message in progress (memory records carry it)
    unbilled_tokens: int = 0  # LLM tokens used but not yet charged to the agent's token bucket
    failure: OpenFangError | None = None  # the LLM error of the message in progress, for its error reply
    task: dict[str, Any] | None = None  # task_update of the message in progress: goes with its reply
    resumed: list[dict[str, Any]] = field(default_factory=list)  # turns before a re-spawn (from memory)
    hibernated: bool = False  # its sandbox is freed; its guest state is in a snapshot
    snapshot: Any = None  # the in-memory Snapshot while its file is being written (then None)
    idle_token: int = 0  # bumped whenever it becomes idle: a stale idle-timer entry no longer matches
    no_hibernate: str | None = None  # why idle hibernation is off for it (its module cannot be snapshotted)
    # agent.move (the source half): the request to answer, its typed body and its deadline. While set, the
    # agent takes no new message; once idle its state is snapshotted (or, unsnapshottable, dropped) and the
    # record let go.
    moving: tuple[Envelope, AgentMove, float] | None = None
    restored: str = "fresh"  # how its current instance started: fresh (agent_init) | snapshot (restored)
    # Unparked (rebuilt from a ParkedAgent) and not woken yet: ``sandbox`` is a loaded, never started
    # instance that a wake restores into (no second load); parked again if no message wakes it.
    unparked: bool = False
    manifest_path: str | None = None  # as spawned (a park keeps it to rebuild the record)
    parent: str | None = None  # the agent that spawned it, if any (likewise)

    @property
    def inbox(self) -> Sequence[Message]:
        """The messages waiting, oldest first (read only: :meth:`post` and :meth:`take` change it)."""
        return self._inbox if self._inbox is not None else _NO_MESSAGES

    def post(self, message: Message) -> None:
        """Queue a message behind the others."""
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(message)

    def take(self) -> Message:
        """The oldest waiting message, removed (IndexError when none waits). The last one taken lets the
        deque go: an agent that had traffic is as small as a fresh one once it is idle again."""
        if self._inbox is None:
            raise IndexError("no message is waiting")
        message = self._inbox.popleft()
        if not self._inbox:
            self._inbox = None
        return message

    def take_all(self) -> list[Message]:
        """Every waiting message, removed (a dying agent answers them all with its error)."""
        waiting = list(self._inbox or ())
        self._inbox = None
        return waiting

    @property
    def chat_cache(self) -> jobs.ChatCache:
        """Parsed chat messages of this agent's conversation, made on its first model call."""
        if self._chat_cache is None:
            self._chat_cache = jobs.ChatCache()
        return self._chat_cache

    def forget_chats(self) -> None:
        """Drop the parsed-chat cache and the model plan (rebuilt on demand: a hibernated agent holds
        neither; the plan belongs to the sandbox just closed)."""
        self._chat_cache = None
        self.model_plan = None

    @property
    def state(self) -> str:
        """The state clients see: starting | restarting | suspended | hibernated | running."""
        if self.phase is Phase.STARTING:
            return "starting"
        if self.hibernated:
            return "hibernated"
        if self.sandbox.user_suspended:
            return "suspended"
        return "restarting" if self.phase is Phase.RESTARTING else "running"


class ParkedAgent:
    """What a worker keeps of a hibernated agent once its snapshot file is on disk (``AgentHost._park``):
    enough to rebuild its :class:`HostedAgent` from the manifest and the file on its next request, and no
    more (~0.3 KB against several KB for a sleeping ``HostedAgent``: no sandbox object, manifest, grant,
    guard, identity). The manifest text and path are interned: agents of one manifest share them."""

    __slots__ = ("created_at", "manifest_path", "manifest_text", "parent", "restarts", "service")

    def __init__(
        self,
        *,
        manifest_text: str,
        manifest_path: str | None,
        parent: str | None,
        created_at: float,
        restarts: int,
        service: str | None,
    ) -> None:
        self.manifest_text = manifest_text
        self.manifest_path = manifest_path
        self.parent = parent
        self.created_at = created_at
        self.restarts = restarts
        self.service = service
