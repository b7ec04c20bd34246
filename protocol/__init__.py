"""openfang.protocol: typed, versioned msgpack messages over ZeroMQ. Depends on nothing else of ours.

Importing the package registers every catalogued body validator (``messages``), so
``openfang.protocol.envelope.decode`` always validates bodies, whichever module a caller imports first.
"""

from openfang.protocol import messages as messages  # imported for its registrations
