"""A spawn's first message: ``agent.spawn`` with ``text``, answered once for both (issue 15, warm start).

The gateway forwards the spawn and, right behind it on the same worker link, an ordinary ``agent.send`` of
the text to the new agent. The worker handles its link in order, so the message finds its agent (it waits
in the agent's inbox while ``agent_init`` runs) and passes every check an ``agent.send`` from a client
passes there (the agent's rate limit, the injection check). :class:`FirstMessage` joins the two answers:

- the spawn failed: its error is the reply, at once; the message's answer, whenever it comes, is dropped
  (the worker answers it ``not_found``, or with the spawn's error when the agent died starting);
- both succeeded: the spawn's ``agent.spawn.ok`` with the message's ``reply`` and ``usage``;
- the spawn succeeded and the message failed: the spawn's ``agent.spawn.ok`` with ``send_error`` (the error
  body: ``code``, ``message`` and its details). The agent stays spawned, and the client learns its id.

One case is sent again: a ``not_found`` for the message that arrives *before* the spawn's answer means the
worker had not built the agent yet when the message came (a manifest with MCP servers is built after they
connect, off the worker's loop); the message is sent once more when the spawn's success arrives.

The joined reply is held until the spawn's registry row is on disk like any spawn's acknowledgement: the
gateway decides that (:meth:`Gateway._spawn`), this class only joins.
"""

from __future__ import annotations

from openfang.protocol import messages
from openfang.protocol.bodies import AgentSend, AgentSpawn
from openfang.protocol.envelope import Envelope


class FirstMessage:
    """The two answers of one spawn with a first message; each ``on_*`` returns the reply once it is
    complete (exactly once), None while it waits."""

    __slots__ = ("done", "resend", "sent", "session", "spawned", "text")

    def __init__(self, spawn: AgentSpawn) -> None:
        if spawn.text is None:
            raise ValueError("FirstMessage needs a spawn with text")
        self.text = spawn.text
        self.session = spawn.session
        self.spawned: Envelope | None = None  # the spawn's success
        self.sent: Envelope | None = None  # the message's answer (success or error)
        self.done = False  # the reply was made: later answers are dropped
        self.resend = False  # the caller must send the message again (see the module docstring)

    def request(self, agent_id: str, request_id: str) -> Envelope:
        """The ``agent.send`` of the first message to ``agent_id`` (with the spawn request's id)."""
        send = AgentSend(text=self.text, agent_id=agent_id, session=self.session)
        return Envelope(type="agent.send", body=messages.to_body(send), id=request_id)

    def on_spawn(self, reply: Envelope) -> Envelope | None:
        """The spawn's answer. An error is the reply at once; a success waits for the message's answer (and
        asks for the message again, :attr:`resend`, when its ``not_found`` came first)."""
        if self.done:
            return None
        if reply.is_error:
            self.done = True
            return reply
        self.spawned = reply
        if self.sent is not None and self.sent.is_error and self.sent.body.get("code") == "not_found":
            self.sent = None
            self.resend = True
            return None
        return self._joined()

    def on_send(self, reply: Envelope) -> Envelope | None:
        """The message's answer (its ``agent.send.ok`` or error)."""
        if self.done:
            return None
        self.sent = reply
        return self._joined()

    def _joined(self) -> Envelope | None:
        if self.spawned is None or self.sent is None:
            return None
        self.done = True
        body = dict(self.spawned.body)
        if self.sent.is_error:
            body["send_error"] = dict(self.sent.body)
        else:
            body["reply"] = self.sent.body.get("reply", "")
            body["usage"] = self.sent.body.get("usage")
        return Envelope(type=self.spawned.type, body=body, id=self.spawned.id)
