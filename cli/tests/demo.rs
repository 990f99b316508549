//! The embedded demo model end to end (issue 9). `dvd up` with no `--model` serves it. Fresh
//! pictures of its world, from seeds training never used, go through the decoupled deployment
//! (gateway -> vision server -> QUIC -> language server). At least 90% of the answers must be
//! right for each scored question kind. The coupled path (`dvd generate`) must give the same
//! answers.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;

use common::{Up, dvd, json_output};
use serde_json::Value;

/// `dvd demo eval --json` of `questions` through `target` (`--url URL` or `--coupled`).
fn eval(questions: &Path, target: &[&str]) -> Value {
    json_output(
        dvd()
            .args(["demo", "eval", "--json", "--questions"])
            .arg(questions)
            .args(target),
    )
}

fn answers(report: &Value) -> Vec<String> {
    report["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["answer"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_demo_model_answers_questions_about_fresh_pictures() {
    let dir = tempfile::tempdir().unwrap();
    // One-shape pictures carry all three scored questions; the others, how many.
    let sets = [
        ("one", 100, Some("1"), 1_000_001),
        ("any", 100, None, 1_000_002),
    ];
    for (name, count, shapes, seed) in sets {
        let mut cmd = dvd();
        cmd.args(["demo", "images", "--out"])
            .arg(dir.path().join(name))
            .args(["--count", &count.to_string(), "--seed", &seed.to_string()]);
        if let Some(n) = shapes {
            cmd.args(["--shapes", n]);
        }
        assert!(cmd.status().unwrap().success());
    }

    let up = Up::start(&["--transport", "quic"]);
    let models = common::http(&up.http, "GET", "/v1/models", b"").json();
    assert_eq!(models["data"][0]["id"], "dvd-demo");
    let url = format!("http://{}", up.http);
    let mut reports = Vec::new();
    for (name, ..) in sets {
        let questions = dir.path().join(name).join("questions.jsonl");
        let decoupled = eval(&questions, &["--url", &url]);
        for (kind, accuracy) in decoupled["accuracy"].as_object().unwrap() {
            assert!(
                accuracy.as_f64().unwrap() >= 0.9,
                "{name}: {kind} {accuracy}"
            );
        }
        let kinds: &[&str] = match name {
            "one" => &["shape", "color", "count"],
            _ => &["count"],
        };
        for kind in kinds {
            let asked = decoupled["asked"][kind].as_u64().unwrap_or(0);
            assert!(asked >= 100, "{name}: only {asked} {kind} questions");
        }
        let coupled = eval(&questions, &["--coupled"]);
        assert_eq!(answers(&coupled), answers(&decoupled), "{name}");
        reports.push(decoupled);
    }

    // `dvd generate` itself (no --model: the demo model) and `dvd chat` agree on a few.
    for row in reports[0]["answers"].as_array().unwrap().iter().take(4) {
        let image = dir.path().join("one").join(row["image"].as_str().unwrap());
        let question = row["question"].as_str().unwrap();
        let generated = json_output(
            dvd()
                .args(["generate", "--wire-features", "--json", "--image"])
                .arg(&image)
                .args(["--prompt", question]),
        );
        assert_eq!(generated["text"], row["answer"], "{question}");
        let out = dvd()
            .args(["chat", "--url", &url, "--image"])
            .arg(&image)
            .arg(question)
            .output()
            .unwrap();
        assert!(out.status.success());
        let chat = String::from_utf8(out.stdout).unwrap();
        assert_eq!(chat.trim_end(), row["answer"].as_str().unwrap());
    }
}
