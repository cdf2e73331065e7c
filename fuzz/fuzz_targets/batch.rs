//! Record-batch header validation and iteration on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sediment_log::batch;

fuzz_target!(|data: &[u8]| {
    let _ = batch::validate_for_append(data, 1 << 20);
    let mut it = batch::BatchIter::new(data, 1 << 20, true);
    for _ in it.by_ref() {}
    assert!(it.position() <= data.len());
});
