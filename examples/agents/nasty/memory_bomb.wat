;; Grows memory 1 page at a time until memory.grow fails (-1 at the sandbox's cap), then replies with
;; "grow failed at page N" so the test sees the failed allocation instead of a crash.
(module
  (memory (export "memory") 1)
  (data (i32.const 64) "grow failed at page ")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64)
    (local $pages i32) (local $len i32) (local $digits i32) (local $i i32) (local $n i32)
    (block $done
      (loop $grow
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        ;; fill the new page so the bomb really costs resident memory
        (memory.fill (i32.shl (i32.sub (memory.size) (i32.const 1)) (i32.const 16)) (i32.const 1) (i32.const 65536))
        (br $grow)))
    (local.set $pages (memory.size))
    ;; write the decimal page count after the text at 64 + 20
    (local.set $n (local.get $pages))
    (local.set $digits (i32.const 0))
    (loop $count
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $count (i32.ne (local.get $n) (i32.const 0))))
    (local.set $n (local.get $pages))
    (local.set $i (local.get $digits))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 84) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $write (i32.ne (local.get $i) (i32.const 0))))
    (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.extend_i32_u (i32.add (i32.const 20) (local.get $digits)))))
)
