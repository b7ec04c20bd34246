"""openfang.workers.sandbox: agents' wasmtime sandboxes (the only place that touches wasmtime).

``_wasmtime`` wraps the engine, linker, stores and async calls; ``instance`` is one agent's sandbox (fuel
slices, suspend/resume, limits); ``guest_abi`` is the contract with a guest module; ``builtin_guests``
holds the built-in guests as WAT; ``snapshot`` hibernates and wakes a sandbox (its guest state to a file and
back; the file format is ``_snapshot_file``), with ``_wasm_layout`` reading which state a module keeps where.
"""
