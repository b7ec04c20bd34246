;; Its start function (run while the module is instantiated, before any export is called) spins forever.
;; Must be sliced like any call: neighbours keep answering, and the spawn is refused at max_fuel or
;; call_timeout_ms, whichever comes first.
(module
  (memory (export "memory") 1)
  (func $spin (loop $forever (br $forever)))
  (start $spin)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64) (i64.const 0))
)
