//! The Delta SDS stream state machine, fed requests and snapshots (see `trust_sds::fuzzing::delta`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trust_sds::fuzzing::delta(data));
