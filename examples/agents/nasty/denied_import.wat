;; Imports a host function no manifest may grant: refused before instantiation, naming the import.
(module
  (import "env" "process_spawn" (func $spawn (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64)
    (i64.extend_i32_s (call $spawn (local.get 0) (local.get 1))))
)
