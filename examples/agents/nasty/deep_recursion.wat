;; Recurses without a base case: overflows the wasm stack and traps (this agent only).
;; Any other message text is answered with "ok", so tests can tell a restarted agent still works.
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "ok")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func $down (param $n i32) (result i32)
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    ;; messages whose content starts with "r" ({"role":"user","content":"r...) recurse
    (if (i32.eq (i32.load8_u offset=26 (local.get $p)) (i32.const 114))
      (then (drop (call $down (i32.const 0)))))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 2)))
)
