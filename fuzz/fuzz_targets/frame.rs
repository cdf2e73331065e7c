//! The metadata frame envelope on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sediment_log::frame;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode("fuzz", data, b"SIDX", 1, 1 << 20);
    let _ = frame::peek_header("fuzz", data, b"TOPC", 1);
});
