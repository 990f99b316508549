//! Configuration from outside: a checkpoint's config.json (vision and language halves) and the
//! gateway's TOML.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dvd_vision_server::fuzzing::model_config(data);
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = dvd_language_server::model::LanguageConfig::from_json(
            &json,
            std::path::Path::new("config.json"),
        );
    }
    dvd_gateway::fuzzing::config_text(data);
});
