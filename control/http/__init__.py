"""The HTTP face of the cluster: one ASGI app (Starlette on uvicorn) in its own supervised child.

It is a ZeroMQ client of the control gateway like any other (no back door into workers): every route
turns into catalogued requests (``agent.list``, ``agent.info``, ``agent.send``). One module per protocol,
each contributing routes to the app (:mod:`openfang.control.http.app`):

- :mod:`~openfang.control.http.openai_api`  ``/v1/models``, ``/v1/chat/completions`` (OpenAI-compatible)
- :mod:`~openfang.control.http.mcp_server`  ``/mcp`` (MCP streamable HTTP; also stdio: ``openfang mcp serve``)
- :mod:`~openfang.control.http.a2a_api`     ``/a2a/{agent_id}``, agent cards (A2A 1.0, tasks in SQLite)

Shared parts: :mod:`~openfang.control.http.bridge` (the async gateway client), :mod:`~.errors` (JSON
errors), :mod:`~.auth` (bearer tokens), :mod:`~.server` (the child's entry point). The SDKs come with the
``http`` extra; nothing here is imported by the core.
"""
