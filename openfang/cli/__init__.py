"""The ``openfang`` control client."""
