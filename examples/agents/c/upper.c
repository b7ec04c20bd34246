/* An OpenFANG agent in C (no libc): replies with the message content in upper case.
 *
 * Build (Debian: apt-get install -y clang lld):
 *   clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic -o upper.wasm upper.c
 * Guest ABI: docs/guest-abi.md. The input is one JSON chat message {"role":"user","content":"..."}.
 */
typedef unsigned int u32;
typedef unsigned long long u64;

__attribute__((import_module("env"), import_name("log"))) int host_log(const char *ptr, u32 len);

extern unsigned char __heap_base;
static u32 heap = 0;

/* Bump allocator over linear memory; grows memory on demand, 0 when the sandbox's memory cap is reached. */
__attribute__((export_name("alloc"))) void *alloc(u32 size) {
  if (heap == 0) heap = (u32)&__heap_base;
  u32 p = (heap + 7u) & ~7u;
  u32 end = p + size;
  if (end < p) return 0;
  u32 have = __builtin_wasm_memory_size(0) * 65536u;
  if (end > have) {
    u32 pages = (end - have + 65535u) / 65536u;
    if (__builtin_wasm_memory_grow(0, pages) == (unsigned long)-1) return 0;
  }
  heap = end;
  return (void *)p;
}

__attribute__((export_name("agent_init"))) int agent_init(void) { return 0; }

static const char KEY[] = "\"content\":\"";

__attribute__((export_name("agent_handle"))) u64 agent_handle(const char *msg, u32 len) {
  u32 klen = sizeof(KEY) - 1, start = len;
  for (u32 i = 0; i + klen <= len; i++) {
    u32 j = 0;
    while (j < klen && msg[i + j] == KEY[j]) j++;
    if (j == klen) { start = i + klen; break; }
  }
  if (start == len) return (u64)(long long)-2; /* E_INVALID: no content */
  char *out = alloc(len - start);
  if (!out) return (u64)(long long)-8; /* E_NOMEM */
  u32 n = 0;
  for (u32 i = start; i < len && msg[i] != '"'; i++) {
    char c = msg[i];
    if (c == '\\' && i + 1 < len) c = msg[++i]; /* keep escaped characters as they are */
    out[n++] = (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
  }
  host_log(out, n);
  return ((u64)(u32)out << 32) | n;
}
