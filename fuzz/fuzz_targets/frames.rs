//! The gRPC message framing of requests, fed bodies in chunks (see `trust_sds::fuzzing::grpc_frames`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trust_sds::fuzzing::grpc_frames(data));
