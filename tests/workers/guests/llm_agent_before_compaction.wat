(module
  (import "env" "llm_invoke" (func $llm (param i32 i32) (result i32)))
  (import "env" "tool_call" (func $tool (param i32 i32) (result i32)))
  (import "env" "host_result" (func $result (param i32 i32) (result i32)))
  ;; page 0: [1024, 65536) holds the conversation table: 8064 entries of (u32 ptr, u32 len)
  (memory (export "memory") 2)
  (global $count (export "conversation_entries") (mut i32) (i32.const 0))
  ;; [16, 1024): the inbox; the host writes a message that fits here and calls agent_handle(16, len)
  (global (export "agent_inbox") i32 (i32.const 16))
  (global (export "agent_inbox_size") i32 (i32.const 1008))
  ;; [8, 16): the result area, (u32 ptr, u32 cap), set by $offer before every llm_invoke and tool_call
  (global (export "agent_result_area") i32 (i32.const 8))

  (global $heap (export "heap_top") (mut i32) (i32.const 65536))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $need i32)
    (if (i32.gt_u (local.get $n) (i32.const 0x7fff0000)) (then (return (i32.const 0))))
    (local.set $p (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (local.set $need
          (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)) (memory.size)))
        (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func $push (param $p i32) (param $n i32) (result i32)
    (local $slot i32)
    ;; table full: forget the oldest half (the host only sends the newest history_messages anyway)
    (if (i32.ge_u (global.get $count) (i32.const 8064))
      (then
        (memory.copy (i32.const 1024) (i32.const 33280) (i32.const 32256))
        (global.set $count (i32.const 4032))))
    (local.set $slot (i32.add (i32.const 1024) (i32.shl (global.get $count) (i32.const 3))))
    (i32.store (local.get $slot) (local.get $p))
    (i32.store offset=4 (local.get $slot) (local.get $n))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.const 1))

  ;; Offer the free end of the heap as the result area of the next parking host call: ptr = heap top, cap =
  ;; the bytes from there to the end of memory (an alloc of at most cap bytes takes exactly them, no grow).
  (func $offer
    (i32.store (i32.const 8) (global.get $heap))
    (i32.store (i32.const 12) (i32.sub (i32.shl (memory.size) (i32.const 16)) (global.get $heap))))

  ;; Allocate n bytes for the result of the host call just made: the host wrote it there already when it fit
  ;; the offered area (the heap top has not moved since $offer), else copy the pending result into them.
  ;; ptr, or a negative error code.
  (func $fetch (param $n i32) (result i32)
    (local $buf i32) (local $got i32) (local $offered i32)
    (local.set $offered (i32.le_u (local.get $n) (i32.load (i32.const 12))))
    (local.set $buf (call $alloc (local.get $n)))
    (if (i32.eqz (local.get $buf)) (then (return (i32.const -8))))
    (if (local.get $offered) (then (return (local.get $buf))))
    (local.set $got (call $result (local.get $buf) (local.get $n)))
    (if (i32.lt_s (local.get $got) (i32.const 0)) (then (return (local.get $got))))
    (local.get $buf))

  (func (export "agent_init") (result i32) (i32.const 0))

  ;; A failed message leaves no trace in the conversation (no dangling user turn, no unanswered tool call):
  ;; the table is cut back to where it was. If the table was halved meanwhile, its entries moved down 4032.
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (local $saved i32) (local $r i64) (local $buf i32)
    ;; A message in the inbox moves to the heap first: the conversation keeps it, the host reuses the inbox.
    (if (i32.eq (local.get $p) (i32.const 16))
      (then
        (local.set $buf (call $alloc (local.get $n)))
        (if (i32.eqz (local.get $buf)) (then (return (i64.const -8))))
        (memory.copy (local.get $buf) (local.get $p) (local.get $n))
        (local.set $p (local.get $buf))))
    (local.set $saved (global.get $count))
    (local.set $r (call $handle (local.get $p) (local.get $n)))
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (if (i32.lt_u (global.get $count) (local.get $saved))
          (then (global.set $count (i32.sub (local.get $saved) (i32.const 4032))))
          (else (global.set $count (local.get $saved))))))
    (local.get $r))

  (func $handle (param $p i32) (param $n i32) (result i64)
    (local $r i32) (local $buf i32) (local $jlen i32)
    (if (i32.eqz (call $push (local.get $p) (local.get $n))) (then (return (i64.const -4))))
    (loop $turn
      (call $offer)
      (local.set $r (call $llm (i32.const 1024) (i32.shl (global.get $count) (i32.const 3))))
      (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $r)))))
      (if (i32.lt_u (local.get $r) (i32.const 5)) (then (return (i64.const -2))))
      (local.set $buf (call $fetch (local.get $r)))
      (if (i32.lt_s (local.get $buf) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $buf)))))
      (local.set $jlen (i32.load offset=1 align=1 (local.get $buf)))
      (if (i32.gt_u (i32.add (local.get $jlen) (i32.const 5)) (local.get $r)) (then (return (i64.const -2))))
      (if (i32.eqz (call $push (i32.add (local.get $buf) (i32.const 5)) (local.get $jlen)))
        (then (return (i64.const -4))))
      ;; 'A': final answer, the text after the message JSON is the reply
      (if (i32.eq (i32.load8_u (local.get $buf)) (i32.const 65))
        (then
          (return
            (i64.or
              (i64.shl
                (i64.extend_i32_u (i32.add (i32.add (local.get $buf) (i32.const 5)) (local.get $jlen)))
                (i64.const 32))
              (i64.extend_i32_u (i32.sub (i32.sub (local.get $r) (i32.const 5)) (local.get $jlen)))))))
      ;; 'T': run the tool calls of the assistant message just appended, append the tool results
      (call $offer)
      (local.set $r (call $tool (i32.add (local.get $buf) (i32.const 5)) (local.get $jlen)))
      (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $r)))))
      (local.set $buf (call $fetch (local.get $r)))
      (if (i32.lt_s (local.get $buf) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $buf)))))
      (if (i32.eqz (call $push (local.get $buf) (local.get $r))) (then (return (i64.const -4))))
      (br $turn))
    (i64.const -2))
)
