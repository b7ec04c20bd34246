;; Declares 3 linear memories (multi-memory): a store holds one. Refused at instantiation; otherwise each
;; memory would get its own max_heap_mb.
(module
  (memory (export "memory") 1)
  (memory $extra1 1) (memory $extra2 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64) (i64.const 0))
)
