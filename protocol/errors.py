"""The one exception hierarchy of OpenFANG.

Every error we raise derives from :class:`OpenFangError`. Between processes, errors travel as data (an error
reply with a ``code`` string and a ``message``), never as pickled tracebacks; :attr:`OpenFangError.code` is
that string.

    OpenFangError
    ├── ConfigError            a config or manifest is invalid (carries every problem, each with its place)
    ├── ProtocolError          a message could not be decoded or validated        code: bad_request
    │   ├── UnsupportedVersion  envelope version we do not speak                  code: unsupported_version
    │   ├── FrameTooLarge       frame over the configured size limit             code: too_large
    │   └── UnknownType         request type not in the catalogue                code: unknown_type
    ├── RemoteError            the peer answered with an error reply (code from the wire)
    ├── Busy                   a bounded queue is full; retry later              code: busy
    ├── RateLimited            a rate limit was hit; retry later                 code: rate_limited
    ├── Timeout                no answer in time                                 code: timeout
    ├── NotFound               no such child / agent / service                   code: not_found
    ├── Restarting             the agent is being restarted; retry after a delay code: restarting
    ├── Gone                   the agent was registered but is dead (lost, given up) code: gone
    ├── AlreadyExists          id already present / started                      code: already_exists
    ├── SupervisorError        start/stop failures inside the tree               code: supervisor_error
    ├── SandboxError           wasm module, instance or host call failed          code: sandbox_error
    ├── MemoryStoreError       the memory writer or a reader failed              code: memory_error
    ├── SecurityError          a security layer refused something                code: denied
    └── (workers.llm) LLMError an agent's model call failed; body.llm details   code: llm_error
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class OpenFangError(Exception):
    """Root of every OpenFANG error. ``code`` is the stable wire name of the error kind."""

    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_wire(self) -> dict[str, Any]:
        """The error as the data of an error reply."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found while validating: where (file, table, key) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class ConfigError(OpenFangError):
    """A config file or manifest is invalid. ``problems`` lists every problem found, not just the first."""

    code = "bad_config"

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("<config>", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def to_wire(self) -> dict[str, Any]:
        """Error reply data; ``problems`` travels too, so a client can show every problem with its place."""
        wire = super().to_wire()
        wire["problems"] = [{"where": p.where, "what": p.what} for p in self.problems]
        return wire


class ProtocolError(OpenFangError):
    code = "bad_request"


class UnsupportedVersion(ProtocolError):
    code = "unsupported_version"


class FrameTooLarge(ProtocolError):
    code = "too_large"


class UnknownType(ProtocolError):
    """The request's ``type`` is not in the message catalogue (``openfang.protocol.messages``)."""

    code = "unknown_type"


class RemoteError(OpenFangError):
    """The peer replied with an error; ``code`` is the peer's code.

    ``problems`` carries the ``{where, what}`` list of a ``bad_config`` reply (empty otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        problems: list[Problem] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.problems: list[Problem] = list(problems or [])
        self.details: dict[str, Any] = dict(details or {})  # the body's other fields, e.g. ``llm``

    def to_wire(self) -> dict[str, Any]:
        """Relaying a remote error keeps its problems and details (a gateway forwards it as is)."""
        wire = {**self.details, **super().to_wire()}
        if self.problems:
            wire["problems"] = [{"where": p.where, "what": p.what} for p in self.problems]
        return wire


class Busy(OpenFangError):
    code = "busy"


class RateLimited(OpenFangError):
    """A token bucket (per client, per agent) is empty; the message says which and when to retry."""

    code = "rate_limited"


class Timeout(OpenFangError):
    code = "timeout"


class NotFound(OpenFangError):
    code = "not_found"


class Restarting(OpenFangError):
    """The agent is registered and coming back (its worker or the gateway restarted); retry later.

    ``retry_after_ms`` travels in the error body: the gateway's estimate of when the agent answers again.
    """

    code = "restarting"

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire["retry_after_ms"] = self.retry_after_ms
        return wire


class Gone(OpenFangError):
    """The agent was registered but is dead (lost with its worker, or given up after too many restarts).

    Unlike ``not_found`` the id is known: ``agent.list`` shows it as ``dead`` with its reason. It does not
    come back by itself; spawn it again (an explicit ``agent_id``) or kill it to forget it.
    """

    code = "gone"


class AlreadyExists(OpenFangError):
    code = "already_exists"


class SupervisorError(OpenFangError):
    code = "supervisor_error"


class SandboxError(OpenFangError):
    code = "sandbox_error"


class MemoryStoreError(OpenFangError):
    code = "memory_error"


class SecurityError(OpenFangError):
    code = "denied"
