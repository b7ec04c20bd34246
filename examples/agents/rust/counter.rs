//! An OpenFANG agent in Rust: counts the messages it has seen and how many bytes they carried.
//!
//! Build offline with Debian's rustc (apt-get install -y rustc libstd-rust-dev-wasm32):
//!   /usr/bin/rustc --target wasm32-unknown-unknown --crate-type cdylib -O -C strip=symbols -o counter.wasm counter.rs
//! Guest ABI: docs/guest-abi.md.

use std::alloc::{alloc as raw_alloc, Layout};

#[link(wasm_import_module = "env")]
extern "C" {
    #[link_name = "time_now_ms"]
    fn time_now_ms() -> i32;
}

static mut COUNT: u64 = 0;
static mut BYTES: u64 = 0;

#[no_mangle]
pub extern "C" fn alloc(size: u32) -> u32 {
    let layout = match Layout::from_size_align(size.max(1) as usize, 8) {
        Ok(l) => l,
        Err(_) => return 0,
    };
    // The global allocator returns null when memory.grow fails at the sandbox's cap.
    unsafe { raw_alloc(layout) as u32 }
}

#[no_mangle]
pub extern "C" fn agent_init() -> i32 {
    0
}

#[no_mangle]
pub extern "C" fn agent_handle(_ptr: u32, len: u32) -> i64 {
    let (count, bytes) = unsafe {
        COUNT += 1;
        BYTES += len as u64;
        (COUNT, BYTES)
    };
    let now = unsafe { time_now_ms() };
    let reply = format!("rust agent: message {} ({} bytes so far, clock {})", count, bytes, now >= 0);
    let out = alloc(reply.len() as u32);
    if out == 0 {
        return -8;
    }
    unsafe { core::ptr::copy_nonoverlapping(reply.as_ptr(), out as *mut u8, reply.len()) };
    ((out as i64) << 32) | reply.len() as i64
}
