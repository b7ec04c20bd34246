"""openfang.workers.tools: the tools agents call.

``core`` is the registry and the one door every call goes through; ``schema`` the argument validator;
``builtin``, ``net``, ``host`` and ``kv`` the built-in tools; ``registry`` assembles the built-in set.
"""
