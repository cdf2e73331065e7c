//! Record decoding (including decompression) of arbitrary batches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sediment_log::{batch, records};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = batch::parse_header(data, 1 << 20) {
        if data.len() >= h.size {
            if let Ok(p) = records::payload(data, &h) {
                let _ = records::decode(&h, &p);
            }
        }
    }
    let _ = records::first_at_or_after(data, 1 << 20, 0);
});
