//! Snapshot decoding through `scale_engine_restore`: arbitrary bytes (and mutations of a real
//! snapshot, found by the fuzzer from the seed below) never panic.
#![no_main]

use std::ptr::null_mut;

use libfuzzer_sys::fuzz_target;
use scale::{scale_engine_free, scale_engine_restore, scale_status};

const YAML: &str = "sampler: { window_size: 8, train_size: 4, n_trees: 2, height: 3 }\nkeys: { max_keys: 4 }\n";

fuzz_target!(|data: &[u8]| {
    // Give the fuzzer the magic and version so it reaches the decoder.
    let mut snap = b"SCALESNP\x01\x00\x00\x00".to_vec();
    snap.extend_from_slice(data);
    for bytes in [data, &snap[..]] {
        let mut e = null_mut();
        // SAFETY: valid buffers.
        let st = unsafe { scale_engine_restore(YAML.as_ptr(), YAML.len(), bytes.as_ptr(), bytes.len(), &mut e, null_mut(), 0, null_mut()) };
        assert_ne!(st, scale_status::Panic);
        // SAFETY: NULL or a fresh handle.
        unsafe { scale_engine_free(e) };
    }
});
