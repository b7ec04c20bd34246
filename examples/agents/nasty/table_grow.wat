;; Grows a private (unexported) table 1,000 elements at a time until table.grow fails (-1 at the sandbox's
;; max_table_elements), then replies "table.grow failed at N" with the table's size.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (data (i32.const 64) "table.grow failed at ")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64)
    (local $size i32) (local $n i32) (local $digits i32) (local $i i32)
    (block $done
      (loop $grow
        (br_if $done (i32.eq (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1)))
        (br $grow)))
    (local.set $size (table.size $t))
    (local.set $n (local.get $size))
    (loop $count
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $count (i32.ne (local.get $n) (i32.const 0))))
    (local.set $n (local.get $size))
    (local.set $i (local.get $digits))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 85) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $write (i32.ne (local.get $i) (i32.const 0))))
    (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.extend_i32_u (i32.add (i32.const 21) (local.get $digits)))))
)
