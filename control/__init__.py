"""openfang.control: the daemon side of the system.

The daemon (``openfang-supervisor``), the cluster config, the control gateway with its routing and security
guard, and sd_notify. It composes the generic OTP behaviour of :mod:`openfang.supervisor` with the security
engine and the memory writer; the supervisor package itself knows none of them.
"""
