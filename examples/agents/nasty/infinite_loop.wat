;; Spins forever in agent_handle: must cost only its fuel budget and hit its call deadline.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0))
)
