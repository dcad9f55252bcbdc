//! Configuration parsing through `scale_engine_new`: any bytes give OK or an error status with a
//! message, never a panic (which the boundary would report as SCALE_STATUS_PANIC).
#![no_main]

use std::ptr::null_mut;

use libfuzzer_sys::fuzz_target;
use scale::{scale_engine_free, scale_engine_new, scale_status};

fuzz_target!(|data: &[u8]| {
    let mut e = null_mut();
    let mut msg = [0u8; 256];
    let mut len = usize::MAX;
    // SAFETY: valid buffers.
    let st = unsafe { scale_engine_new(data.as_ptr(), data.len(), &mut e, msg.as_mut_ptr().cast(), msg.len(), &mut len) };
    assert_ne!(st, scale_status::Panic, "{}", String::from_utf8_lossy(&msg[..len.min(256)]));
    assert!(len <= msg.len());
    assert!(std::str::from_utf8(&msg[..len]).is_ok(), "message is UTF-8");
    match st {
        scale_status::Ok => assert!(!e.is_null() && len == 0),
        _ => assert!(e.is_null() && len > 0, "{st:?} without a message"),
    }
    // SAFETY: NULL or a fresh handle.
    unsafe { scale_engine_free(e) };
});
