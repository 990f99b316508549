//! The Rust world against its Python twin, `tools/demo/world.py` (what the demo model was trained
//! on): python3 imports it (standard library only) and prints its vocabularies, question texts,
//! fixture scene, and scenes it samples with what it says about them; every one must be what
//! this crate says. Both sides' sampled scenes must follow the one specification.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use dvd_demo_world::{
    BACKGROUNDS, Colour, Question, QuestionKind, Scene, Shape, ShapeKind, render,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Scenes Python samples (seeds 0..).
const PYTHON_SCENES: u64 = 300;

/// What world.py defines and says, as JSON.
fn python_world() -> Value {
    let script = format!(
        r#"
import json, random, sys
sys.path.insert(0, sys.argv[1])
import world
scenes = []
for seed in range({PYTHON_SCENES}):
    scene = world.sample_scene(random.Random(seed))
    scenes.append({{"scene": scene, "describe": world.describe(scene),
                   "questions": world.questions(scene)}})
print(json.dumps({{
    "shapes": world.SHAPES,
    "colours": list(world.COLOURS.items()),
    "backgrounds": world.BACKGROUNDS,
    "numbers": world.NUMBERS,
    "questions": {{"shape": world.SHAPE_QUESTION, "color": world.COLOUR_QUESTION,
                   "count": world.COUNT_QUESTION, "describe": world.DESCRIBE_QUESTION}},
    "fixture": world.FIXTURE_SCENE,
    "scenes": scenes,
}}))
"#
    );
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/demo");
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(&demo)
        .output()
        .unwrap_or_else(|e| panic!("running python3 (needed to read {demo:?}/world.py): {e}"));
    assert!(
        out.status.success(),
        "world.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn words(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect()
}

fn rgb(value: &Value) -> [u8; 3] {
    let v: Vec<u8> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|c| u8::try_from(c.as_u64().unwrap()).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn number(value: &Value) -> u32 {
    u32::try_from(value.as_u64().unwrap()).unwrap()
}

/// A Python scene `(width, height, background, [(kind, colour, x0, y0, side)...])`.
fn scene(value: &Value) -> Scene {
    let shape = |s: &Value| Shape {
        kind: *ShapeKind::ALL
            .iter()
            .find(|k| k.word() == s[0])
            .unwrap_or_else(|| panic!("unknown shape {}", s[0])),
        colour: *Colour::ALL
            .iter()
            .find(|c| c.word() == s[1])
            .unwrap_or_else(|| panic!("unknown colour {}", s[1])),
        x: number(&s[2]),
        y: number(&s[3]),
        side: number(&s[4]),
    };
    Scene {
        width: number(&value[0]),
        height: number(&value[1]),
        background: rgb(&value[2]),
        shapes: value[3].as_array().unwrap().iter().map(shape).collect(),
    }
}

/// The specification both worlds sample from (see the crate's documentation).
fn assert_follows_the_specification(scene: &Scene) {
    let (w, h) = (scene.width, scene.height);
    assert!(
        (224..=1024).contains(&w) && (224..=1024).contains(&h),
        "{w}x{h}"
    );
    assert!(2 * w >= h && 2 * h >= w, "aspect {w}x{h}");
    assert!(BACKGROUNDS.contains(&scene.background));
    assert!((1..=3).contains(&scene.shapes.len()), "{scene:?}");
    let short = w.min(h);
    for (i, s) in scene.shapes.iter().enumerate() {
        assert!(
            s.side * 100 >= short * 25 && s.side * 100 <= short * 60,
            "{s:?} in {w}x{h}"
        );
        assert!(
            s.x + s.side <= w && s.y + s.side <= h,
            "{s:?} outside {w}x{h}"
        );
        for t in &scene.shapes[i + 1..] {
            assert!(s.disjoint(t), "{s:?} overlaps {t:?}");
            assert!((s.x, s.y) <= (t.x, t.y), "not left to right: {s:?}, {t:?}");
        }
    }
}

#[test]
fn rust_scenes_follow_the_specification() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut counts = [0; 3];
    for _ in 0..500 {
        let scene = Scene::sample(&mut rng, None);
        assert_follows_the_specification(&scene);
        counts[scene.shapes.len() - 1] += 1;
    }
    assert!(counts.iter().all(|&c| c > 100), "shape counts {counts:?}");
    let three = Scene::sample(&mut rng, Some(3));
    assert_eq!(three.shapes.len(), 3);
}

#[test]
fn the_python_twin_defines_and_says_the_same() {
    let python = python_world();
    // Vocabularies, colours, backgrounds and question texts.
    let shapes: Vec<&str> = ShapeKind::ALL.iter().map(|k| k.word()).collect();
    assert_eq!(words(&python["shapes"]), shapes);
    let colours: Vec<(&str, [u8; 3])> = python["colours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_str().unwrap(), rgb(&pair[1])))
        .collect();
    let ours: Vec<(&str, [u8; 3])> = Colour::ALL.iter().map(|c| (c.word(), c.rgb())).collect();
    assert_eq!(colours, ours);
    let backgrounds: Vec<[u8; 3]> = python["backgrounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(rgb)
        .collect();
    assert_eq!(backgrounds, BACKGROUNDS);
    assert_eq!(
        words(&python["numbers"]),
        QuestionKind::Count.choices(),
        "count answers"
    );
    for kind in [
        QuestionKind::Shape,
        QuestionKind::Color,
        QuestionKind::Count,
        QuestionKind::Describe,
    ] {
        assert_eq!(python["questions"][kind.name()], kind.text(), "{kind:?}");
    }
    // The fixture scene, painted by this crate, is the picture Python painted.
    let fixture = scene(&python["fixture"]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world-scene.png");
    let painted = image::open(&path).unwrap().to_rgb8();
    assert!(render(&fixture) == painted, "render differs from {path:?}");
    // Python's scenes follow the specification, and both sides describe and question them alike.
    for sampled in python["scenes"].as_array().unwrap() {
        let scene = scene(&sampled["scene"]);
        assert_follows_the_specification(&scene);
        assert_eq!(scene.describe(), sampled["describe"], "{scene:?}");
        let theirs: BTreeSet<(&str, &str)> = sampled["questions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|qa| (qa[0].as_str().unwrap(), qa[1].as_str().unwrap()))
            .collect();
        let questions = Question::for_scene(&scene);
        let ours: BTreeSet<(&str, &str)> = questions
            .iter()
            .map(|q| (q.question.as_str(), q.expected.as_str()))
            .collect();
        assert_eq!(ours, theirs, "{scene:?}");
    }
}
