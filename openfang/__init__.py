"""OpenFANG: an agent operating system.

Agents run as wasmtime sandboxes inside worker processes that an Erlang/OTP-style supervisor tree forks,
pins and restarts. Everything talks typed msgpack messages over ZeroMQ.

Subpackages (one import root; the top-level folders of the repository map onto them):

- ``openfang.protocol``   messages, codec, errors, socket helpers (depends on nothing of ours)
- ``openfang.supervisor`` the generic OTP supervisor behaviour (specs, restart rules, runtime)
- ``openfang.control``    the daemon (``openfang-supervisor``), cluster config, the control gateway
- ``openfang.workers``    worker processes and the sandboxes they host
- ``openfang.memory``     the single SQLite writer and the read path
- ``openfang.security``   the security engine
- ``openfang.cli``        the ``openfang`` control client
"""

from openfang import _coldstart, _optional

_coldstart.install()  # the daemon's start runs without the cyclic collector: see the module's docstring
_optional.install()  # before anything imports structlog or dataclasses: see the module's docstring

from openfang import _precompiled  # noqa: E402  (dataclasses as _optional imports it)

_precompiled.install()  # before our first dataclass: see the module's docstring

from openfang.protocol.errors import OpenFangError  # noqa: E402  (after the finder, on purpose)

__version__ = "0.1.0"
__all__ = ["OpenFangError", "__version__"]

_coldstart.preload()  # the daemon's first worker imports its modules meanwhile: see its docstring
