"""openfang.protocol: typed, versioned msgpack messages over ZeroMQ. Depends on nothing else of ours."""
