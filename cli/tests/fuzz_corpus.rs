//! The fuzz targets of `fuzz/` in every CI run, for a bounded time (issue 12): each target's
//! committed corpus (`fuzz/corpus/<target>/`: seeds and what libFuzzer kept) and crash
//! reproducers (`fuzz/regressions/<target>/`) go through the same entry point the fuzzer calls,
//! then a fixed number of seeded mutations of them (byte flips, truncations, splices) do too. A
//! panic, or a hang past the test's timeout, is a failure.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mutated inputs tried per target, each from a corpus file drawn at random.
const MUTATIONS: usize = 4096;

/// A target's name and entry point (what `fuzz/fuzz_targets/<name>.rs` calls).
type Target = (&'static str, fn(&[u8]));

fn config_parsing(data: &[u8]) {
    dvd_vision_server::fuzzing::model_config(data);
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ =
            dvd_language_server::model::LanguageConfig::from_json(&json, Path::new("config.json"));
    }
    dvd_gateway::fuzzing::config_text(data);
}

fn feature_stream(data: &[u8]) {
    dvd_transport::fuzzing::decode_header(data);
    dvd_transport::fuzzing::receive_stream(data);
}

const TARGETS: [Target; 4] = [
    ("feature_stream", feature_stream),
    ("image_preprocess", dvd_vision_server::fuzzing::image_bytes),
    ("openai_request", dvd_gateway::fuzzing::chat_completion_body),
    ("config_parsing", config_parsing),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files of `fuzz/<kind>/<target>/`, sorted.
fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// A seeded mutation of `input`, splicing from `other`.
fn mutate(rng: &mut ChaCha8Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    match rng.random_range(0..4) {
        0 if !out.is_empty() => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 if !out.is_empty() => out.truncate(rng.random_range(0..out.len())),
        2 if !out.is_empty() => {
            let i = rng.random_range(0..out.len());
            out[i] = [0, 0xff, 0x7f, 0x80][rng.random_range(0..4)];
        }
        _ => {
            let at = rng.random_range(0..=out.len());
            let from = rng.random_range(0..=other.len());
            out.splice(at..at, other[from..].iter().copied().take(64));
        }
    }
    out
}

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    for (name, run) in TARGETS {
        let corpus = files("corpus", name);
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{name} has {} inputs; regenerate seeds (fuzz/README.md)",
            corpus.len()
        );
        for file in corpus.iter().chain(&files("regressions", name)) {
            run(&std::fs::read(file).unwrap());
        }
    }
}

#[test]
fn seeded_mutations_of_the_corpus_pass_their_target() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    for (name, run) in TARGETS {
        let inputs: Vec<Vec<u8>> = files("corpus", name)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            // Large inputs (pictures) are slow to mutate many times; small ones carry the
            // structure worth mutating.
            .filter(|b| b.len() <= 64 << 10)
            .collect();
        for _ in 0..MUTATIONS {
            let input = &inputs[rng.random_range(0..inputs.len())];
            let other = &inputs[rng.random_range(0..inputs.len())];
            run(&mutate(&mut rng, input, other));
        }
    }
}

/// Writes the seed corpus: `cargo test -p dvd --test integration fuzz_corpus:: -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seeds change"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for (i, stream) in dvd_transport::fuzzing::seed_streams().iter().enumerate() {
        write("feature_stream", &format!("seed-{i}"), stream);
    }
    let pictures = [
        "examples/yellow-square.png",
        "vision-server/tests/fixtures/preprocess/images/jpeg_420_61x47.jpg",
        "vision-server/tests/fixtures/preprocess/images/jpeg_444_61x47.jpg",
    ];
    for picture in pictures {
        let bytes = std::fs::read(root.join(picture)).unwrap();
        let name = Path::new(picture).file_name().unwrap().to_str().unwrap();
        write("image_preprocess", &format!("seed-{name}"), &bytes);
    }
    let jpeg = std::fs::read(root.join(pictures[1])).unwrap();
    use base64::Engine as _;
    let url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    );
    let bodies = [
        serde_json::json!({"model": "dvd", "messages": [{"role": "user", "content": "Hello!"}]}),
        serde_json::json!({
            "model": "dvd",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
                    {"type": "text", "text": "What shape is in the image?"},
                ]},
            ],
            "max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "stream": true,
            "stream_options": {"include_usage": true}, "stop": ["\n"], "seed": 7,
        }),
        serde_json::json!({
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ]},
            ],
            "max_completion_tokens": 4, "ignore_eos": true,
        }),
    ];
    for (i, body) in bodies.iter().enumerate() {
        write(
            "openai_request",
            &format!("seed-{i}.json"),
            body.to_string().as_bytes(),
        );
    }
    let configs = [
        "models/dvd-demo/config.json",
        "vision-server/tests/fixtures/model/flash-custom/config.json",
        "vision-server/tests/fixtures/model/vit300m-hf/config.json",
        "language-server/tests/fixtures/model/internvl-moe-custom-bf16/config.json",
        "deploy/k8s/base/gateway.toml",
    ];
    for config in configs {
        let bytes = std::fs::read(root.join(config)).unwrap();
        let name = config.replace('/', "_");
        write("config_parsing", &format!("seed-{name}"), &bytes);
    }
}
