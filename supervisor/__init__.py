"""openfang.supervisor: the generic OTP supervisor behaviour (specs, restart rules, runtime, the child API).

It imports only :mod:`openfang.protocol`: a child's start is data (``"module:function"`` + args), so the
supervisor never needs to know what it starts.
"""
