//! The PEM/X.509 validation path of a CA Secret's data (see `trust_sds::fuzzing::pem`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trust_sds::fuzzing::pem(data));
