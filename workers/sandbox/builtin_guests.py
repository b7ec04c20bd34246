"""Built-in guests, as WebAssembly text (wasmtime compiles WAT directly: no toolchain, reproducible offline).

``builtin:llm-agent`` keeps the conversation in its own linear memory as a table of (ptr, len) entries, one
per chat message (the user's message, each assistant message, each batch of tool results) and loops:
``llm_invoke`` over the whole table; a final answer ends the message, a tool-call message is passed to
``tool_call`` and its results are appended. The host bounds the loop (max_calls_per_message -> E_LIMIT).
The table keeps the newest 8064 entries (full, it forgets the oldest 4032); the host sends the model the
newest ``history_messages`` of them. A message that fails (an LLM error, a tool-call limit) is taken back
out of the table, so the next message's conversation has no half-turn in it.

Memory is a bump allocator (``$bump``, ``heap_top``) that reclaims only when it must: when ``alloc(n)``
cannot grow memory (``memory.grow`` returns -1 at the manifest's ``max_heap_mb``) it compacts the
conversation and tries once more. Compaction keeps the newest entries, at most 4032 (``history_messages``
is at most 4000, so the model's view does not change), and of those only as many newest as fit in 3/4 of
the heap memory has now less ``n``: after the alloc a quarter of the heap at least is free again, so a
compaction copies at most 3 bytes per byte allocated since the last one. When the newest 4032 entries do not
fit there (huge messages or tool results), fewer are kept, and the model then sees fewer than
``history_messages`` entries (at worst none of the old ones: ``n`` near the heap's size). The kept entries'
bytes move down to the heap's base in table order (entries lie in the heap in that order and never
overlap, so each moves down or stays; ``memory.copy`` is a memmove), their slots to the table's start, the
rest of the heap is zeroed (a snapshot then stores no forgotten message) and ``heap_top`` is reset. It runs
only inside ``alloc``, called by the host before ``agent_handle`` (a message longer than the inbox), by
``agent_handle`` before it reads the table's length, and by ``$fetch`` when every entry of the message so far
is in the table: at each, no local holds a heap pointer that is not an entry. A failed message's rollback
cuts the table back by what it had then less what was forgotten meanwhile (``conversation_forgotten``
counts it). An ``n`` larger than the heap memory has now is refused without compacting: that message fails
with E_NOMEM and the host restarts the agent per its policy. The fast path costs one call more per alloc
(``alloc`` -> ``$bump``): no measurable change per message (perf/PROFILE.md).

``builtin:echo`` replies with the message it was given (routing and density benchmarks, tests).

Both have an inbox (the optional ``agent_inbox`` / ``agent_inbox_size`` exports, docs/guest-abi.md): the host
writes a message that fits there and calls ``agent_handle`` once, without ``alloc``. The llm-agent also has a
result area (``agent_result_area``, [8, 16) of page 0): before each ``llm_invoke`` / ``tool_call`` it offers
the free end of its heap there, the host writes a result that fits straight into it, and the ``alloc`` that
follows takes exactly those bytes: no ``host_result`` call, no copy. The llm-agent's inbox is
[16, 1024) of page 0, below its conversation table, which no earlier version of the module used: a snapshot
of the module before the inbox (same memory layout, same globals) fits this one (``_EARLIER``). It
copies an inbox message to its heap (the conversation keeps it; the host overwrites the inbox on the next
message). The echo's inbox is its whole heap page (it keeps nothing between messages).

Both export every mutable global they keep (``heap_top``, the bump pointer; ``conversation_entries``, the
llm-agent's table length; ``conversation_forgotten``, the entries it has forgotten), so a snapshot
(workers/sandbox/snapshot.py) captures their whole state: linear memory plus these globals. A new mutable
global in a built-in guest must be exported too, or hibernation refuses the module. A snapshot of the
llm-agent before it reclaimed its heap wakes in this one (``_EARLIER``): same layout, and its missing
``conversation_forgotten`` starts at 0, which is right (only its change during one message is used).
"""

from __future__ import annotations

import functools

from openfang.security._hashing import sha256


# The bump allocator: 8-byte aligned bump pointer, grows memory on demand, 0 on failure. The echo's ``alloc``
# is exactly this; the llm-agent's is this as ``$bump``, called by an ``alloc`` that reclaims its heap.
def _bump_allocator(func: str) -> str:
    return (
        """
  (global $heap (export "heap_top") (mut i32) (i32.const 65536))
  (func """
        + func
        + """ (param $n i32) (result i32)
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
"""
    )


_ALLOC = _bump_allocator('$alloc (export "alloc")')

LLM_AGENT_WAT = (
    """(module
  (import "env" "llm_invoke" (func $llm (param i32 i32) (result i32)))
  (import "env" "tool_call" (func $tool (param i32 i32) (result i32)))
  (import "env" "host_result" (func $result (param i32 i32) (result i32)))
  ;; page 0: [1024, 65536) holds the conversation table: 8064 entries of (u32 ptr, u32 len)
  (memory (export "memory") 2)
  (global $count (export "conversation_entries") (mut i32) (i32.const 0))
  ;; how many entries the table has forgotten since the instance began (wraps; only differences are used)
  (global $forgotten (export "conversation_forgotten") (mut i32) (i32.const 0))
  ;; [16, 1024): the inbox; the host writes a message that fits here and calls agent_handle(16, len)
  (global (export "agent_inbox") i32 (i32.const 16))
  (global (export "agent_inbox_size") i32 (i32.const 1008))
  ;; [8, 16): the result area, (u32 ptr, u32 cap), set by $offer before every llm_invoke and tool_call
  (global (export "agent_result_area") i32 (i32.const 8))
"""
    + _bump_allocator("$bump")
    + """
  ;; alloc: the bump allocator; when memory cannot grow (max_heap_mb), compact the conversation and try again.
  ;; It is called by the host before agent_handle (a message too long for the inbox), by agent_handle before
  ;; it takes the table's length, and by $fetch after every entry of this message is in the table: at each,
  ;; every heap byte still needed is an entry of the table (no local holds another heap pointer; the offered
  ;; result area is used only when the result fit it, and then alloc does not grow), so moving them is safe.
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (call $bump (local.get $n)))
    (if (local.get $p) (then (return (local.get $p))))
    (call $reclaim (local.get $n)))

  ;; n bytes after compacting, or 0. n larger than the heap memory has now can never fit: the conversation is
  ;; left alone. Otherwise keep what fits in 3/4 of it less n, so a quarter at least is free again after
  ;; this alloc (a compaction copies at most 3 bytes per byte allocated since the last one).
  (func $reclaim (param $n i32) (result i32)
    (local $size i32)
    (local.set $size (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 65536)))
    (if (i32.gt_u (local.get $n) (i32.sub (local.get $size) (i32.const 8))) (then (return (i32.const 0))))
    (call $compact
      (select
        (i32.sub (i32.sub (local.get $size) (i32.shr_u (local.get $size) (i32.const 2))) (local.get $n))
        (i32.const 0)
        (i32.gt_u (i32.sub (local.get $size) (i32.shr_u (local.get $size) (i32.const 2))) (local.get $n))))
    (call $bump (local.get $n)))

  ;; Keep the newest entries whose bytes fit in budget, at most 4032 (the manifest sends the model at most
  ;; 4000); move their bytes down to the heap's base in order (entries lie in the heap in table order and do
  ;; not overlap, so each moves down or stays: memory.copy is a memmove), their slots to the table's start,
  ;; zero the rest of the heap (a snapshot stores no forgotten bytes) and reset the bump pointer.
  (func $compact (param $budget i32)
    (local $first i32) (local $bytes i32) (local $len i32) (local $src i32) (local $dst i32) (local $slot i32)
    (local.set $first (global.get $count))
    (block $chosen
      (loop $older
        (br_if $chosen (i32.eqz (local.get $first)))
        (br_if $chosen (i32.ge_u (i32.sub (global.get $count) (local.get $first)) (i32.const 4032)))
        (local.set $len
          (i32.load offset=4 (i32.add (i32.const 1016) (i32.shl (local.get $first) (i32.const 3)))))
        (br_if $chosen (i32.gt_u (local.get $len) (i32.sub (local.get $budget) (local.get $bytes))))
        (local.set $bytes (i32.add (local.get $bytes) (local.get $len)))
        (local.set $first (i32.sub (local.get $first) (i32.const 1)))
        (br $older)))
    (local.set $dst (i32.const 65536))
    (local.set $slot (i32.const 1024))
    (local.set $src (i32.add (i32.const 1024) (i32.shl (local.get $first) (i32.const 3))))
    (block $moved
      (loop $next
        (br_if $moved
          (i32.ge_u (local.get $src) (i32.add (i32.const 1024) (i32.shl (global.get $count) (i32.const 3)))))
        (local.set $len (i32.load offset=4 (local.get $src)))
        (memory.copy (local.get $dst) (i32.load (local.get $src)) (local.get $len))
        (i32.store (local.get $slot) (local.get $dst))
        (i32.store offset=4 (local.get $slot) (local.get $len))
        (local.set $dst (i32.add (local.get $dst) (local.get $len)))
        (local.set $slot (i32.add (local.get $slot) (i32.const 8)))
        (local.set $src (i32.add (local.get $src) (i32.const 8)))
        (br $next)))
    (local.set $dst (i32.and (i32.add (local.get $dst) (i32.const 7)) (i32.const -8)))
    (memory.fill (local.get $dst) (i32.const 0) (i32.sub (global.get $heap) (local.get $dst)))
    (global.set $heap (local.get $dst))
    (global.set $forgotten (i32.add (global.get $forgotten) (local.get $first)))
    (global.set $count (i32.sub (global.get $count) (local.get $first))))

  (func $push (param $p i32) (param $n i32) (result i32)
    (local $slot i32)
    ;; table full: forget the oldest half (the host only sends the newest history_messages anyway)
    (if (i32.ge_u (global.get $count) (i32.const 8064))
      (then
        (memory.copy (i32.const 1024) (i32.const 33280) (i32.const 32256))
        (global.set $forgotten (i32.add (global.get $forgotten) (i32.const 4032)))
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
  ;; the table is cut back to where it was, less the entries forgotten meanwhile (a halving of the table or a
  ;; compaction moved the rest down by that many; when that took some of this message's too, to nothing).
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (local $saved i32) (local $r i64) (local $buf i32) (local $gone i32)
    ;; A message in the inbox moves to the heap first: the conversation keeps it, the host reuses the inbox.
    (if (i32.eq (local.get $p) (i32.const 16))
      (then
        (local.set $buf (call $alloc (local.get $n)))
        (if (i32.eqz (local.get $buf)) (then (return (i64.const -8))))
        (memory.copy (local.get $buf) (local.get $p) (local.get $n))
        (local.set $p (local.get $buf))))
    (local.set $saved (global.get $count))
    (local.set $gone (global.get $forgotten))
    (local.set $r (call $handle (local.get $p) (local.get $n)))
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (local.set $gone (i32.sub (global.get $forgotten) (local.get $gone)))
        (global.set $count
          (select
            (i32.sub (local.get $saved) (local.get $gone))
            (i32.const 0)
            (i32.gt_u (local.get $saved) (local.get $gone))))))
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
"""
)

ECHO_WAT = (
    """(module
  (memory (export "memory") 2)
  ;; The heap page is the inbox too: a message is replied to before the next one is written.
  (global (export "agent_inbox") i32 (i32.const 65536))
  (global (export "agent_inbox_size") i32 (i32.const 65536))
"""
    + _ALLOC
    + """
  (func (export "agent_init") (result i32) (i32.const 0))
  ;; Reply with the message itself; the heap is reset after each message (nothing is kept).
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (global.set $heap (i32.const 65536))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
)
"""
)

BUILTINS: dict[str, str] = {"llm-agent": LLM_AGENT_WAT, "echo": ECHO_WAT}


# Digests of earlier versions of a built-in whose snapshots fit the current one (same memory layout, same
# exported mutable globals, and nothing the new version reads where the old one kept something): an agent
# hibernated by an older worker wakes in a newer one. Any other digest is refused by the snapshot restore.
_EARLIER: dict[str, tuple[str, ...]] = {
    # before the inbox (2026-12-05), then (llm-agent) before the result area, which lies in bytes [8, 16)
    # no earlier version used and which the guest writes before it reads them, then before it reclaimed its
    # heap (2026-12-06: same layout; its new global conversation_forgotten starts at 0 in a woken snapshot,
    # and only its change during one message is ever used)
    "llm-agent": (
        "8312e2632d45f2dc6617cdbf54a3fb957cff0ac850127d756d524cc7c0e34006",
        "686c2e97fba86d573ba512ad7e80656d47886b07a768a216a51971965f5b3be9",
        "cef529e278f42c5627481740a370e0b2d79134805ecbc21fb6da9c88058864b8",
    ),
    "echo": ("0d75cf9c1d9bedfc80aebf8f925a75f0d27e71708af5cf8fcb8f65a35ae36b1d",),
}


# Every earlier text of a built-in (its sha256), whatever its snapshot layout. Layer 16 names a module by its
# digest; for a built-in the bytes change with OpenFANG's releases, not with the agent's manifest, so a
# manifest version recorded with an earlier text of the same built-in is the same version (see
# :func:`earlier_text`). A change of a built-in's text adds its previous digest here (and to ``_EARLIER``
# when its snapshots fit): tests/workers/test_builtin_guest_versions.py fails until it does.
_PREVIOUS_TEXTS: dict[str, tuple[str, ...]] = dict(_EARLIER)


def earlier_text(name: str, digest: str) -> bool:
    """Whether ``digest`` is an earlier OpenFANG release's text of ``builtin:<name>``."""
    return digest in _PREVIOUS_TEXTS.get(name, ())


@functools.cache
def builtin_source(name: str) -> bytes:
    """The WAT source of ``builtin:<name>`` as bytes (what the module cache is keyed on); made once."""
    return BUILTINS[name].encode()


@functools.cache
def builtin_digest(name: str) -> str:
    """The sha256 of :func:`builtin_source` (hashed once: every spawn of a built-in asks for it)."""
    return sha256(builtin_source(name)).hexdigest()


def snapshot_fits(snapshot_digest: str, module_digest: str) -> bool:
    """True when a snapshot taken of module ``snapshot_digest`` may be restored into ``module_digest``: the
    same module, or a built-in and one of its earlier versions listed in ``_EARLIER``."""
    if snapshot_digest == module_digest:
        return True
    return any(
        snapshot_digest in earlier and builtin_digest(name) == module_digest
        for name, earlier in _EARLIER.items()
    )
