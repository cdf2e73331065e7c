//! A Kafka request frame body as the server sees it: the schema guard, then
//! kafka-protocol's decoder for bodies the guard accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sediment_ingest::fuzz_request_body(data);
});
