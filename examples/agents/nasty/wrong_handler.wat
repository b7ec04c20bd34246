;; agent_handle returns i32 where the guest ABI says i64: would fail every message. Refused at spawn, the
;; error naming the export, the type found and the type expected.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i32) (i32.const 0))
)
