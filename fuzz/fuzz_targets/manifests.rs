//! The manifests (YAML) parser (see `trust_sds::fuzzing::manifests`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trust_sds::fuzzing::manifests(data));
