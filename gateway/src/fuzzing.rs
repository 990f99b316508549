//! Entry points for fuzzers and their corpus-replay tests (`fuzz/`, `cli/tests/fuzz_corpus.rs`).

use crate::GatewayConfig;
use crate::config::PoolSection;

/// A `POST /v1/chat/completions` body through everything the gateway does before routing:
/// JSON parsing, the OpenAI-to-dvd conversion, then validation with image resolution (data
/// URLs, base64, size and count limits). Panics only on a bug.
pub fn chat_completion_body(body: &[u8]) {
    let Ok(parsed) = serde_json::from_slice::<crate::http::openai::ChatCompletionRequest>(body)
    else {
        return;
    };
    let Ok(call) = crate::http::convert::chat_call(parsed) else {
        return;
    };
    let config = GatewayConfig {
        language: PoolSection {
            addresses: vec!["127.0.0.1:1".into()],
            ..PoolSection::default()
        },
        ..GatewayConfig::default()
    };
    let mut request = call.request;
    // The served model, so validation goes past the model check.
    request.model.clear();
    let _ = crate::chat::check_request(&config, request);
}

/// A gateway configuration file's text, parsed and checked. Panics only on a bug.
pub fn config_text(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(mut config) = toml::from_str::<GatewayConfig>(text) {
        let _ = config.check();
        // Keys as written inline; no file is read.
        config.auth.api_keys_file = None;
        let _ = crate::auth::ApiKeys::load(&config.auth);
    }
}
