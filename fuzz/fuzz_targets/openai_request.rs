//! An OpenAI chat-completions body: JSON, content parts, data URLs and base64 images, limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dvd_gateway::fuzzing::chat_completion_body(data);
});
