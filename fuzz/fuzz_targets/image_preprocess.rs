//! Encoded image bytes: decoding (PNG, JPEG, WebP...) and InternVL tiling.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dvd_vision_server::fuzzing::image_bytes(data);
});
