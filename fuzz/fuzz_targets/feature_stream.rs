//! Bytes on a feature connection: frame headers, payloads, CRCs, sequencing, inbox delivery.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dvd_transport::fuzzing::decode_header(data);
    dvd_transport::fuzzing::receive_stream(data);
});
