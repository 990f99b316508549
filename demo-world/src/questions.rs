//! The questions the demo model answers, what each answer must contain, and scoring.

use std::collections::BTreeMap;

use super::{Colour, Scene, ShapeKind};

/// The kinds of question; the first three are scored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum QuestionKind {
    /// `What shape is in the image?` (one shape).
    Shape,
    /// `What color is the shape?` (one shape).
    Color,
    /// `How many shapes are there?`
    Count,
    /// `Describe the image.` (not scored).
    Describe,
}

impl QuestionKind {
    /// The kind's name, as serialised (`shape`, `color`, `count`, `describe`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Shape => "shape",
            Self::Color => "color",
            Self::Count => "count",
            Self::Describe => "describe",
        }
    }

    /// The question's exact text.
    pub fn text(self) -> &'static str {
        match self {
            Self::Shape => "What shape is in the image?",
            Self::Color => "What color is the shape?",
            Self::Count => "How many shapes are there?",
            Self::Describe => "Describe the image.",
        }
    }

    /// The words a right answer chooses from (empty: not scored).
    pub fn choices(self) -> Vec<&'static str> {
        match self {
            Self::Shape => ShapeKind::ALL.iter().map(|k| k.word()).collect(),
            Self::Color => Colour::ALL.iter().map(|c| c.word()).collect(),
            Self::Count => NUMBERS.to_vec(),
            Self::Describe => Vec::new(),
        }
    }
}

const NUMBERS: [&str; 3] = ["one", "two", "three"];

/// A question about a scene and the answer expected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Question {
    /// Which question.
    pub kind: QuestionKind,
    /// Its text.
    pub question: String,
    /// The expected word (for `describe`, the reference phrase).
    pub expected: String,
}

impl Question {
    fn new(kind: QuestionKind, expected: impl Into<String>) -> Self {
        Self {
            kind,
            question: kind.text().to_string(),
            expected: expected.into(),
        }
    }

    /// The questions a scene supports: count and describe always, shape and colour when it has
    /// exactly one shape.
    pub fn for_scene(scene: &Scene) -> Vec<Self> {
        let mut out = Vec::with_capacity(4);
        if let [only] = scene.shapes.as_slice() {
            out.push(Self::new(QuestionKind::Shape, only.kind.word()));
            out.push(Self::new(QuestionKind::Color, only.colour.word()));
        }
        out.push(Self::new(
            QuestionKind::Count,
            NUMBERS[scene.shapes.len().clamp(1, 3) - 1],
        ));
        out.push(Self::new(QuestionKind::Describe, scene.describe()));
        out
    }
}

/// Issue 9's rule: an answer is right when it contains the expected word and no other word of
/// the same question's list (whole words, case-insensitive).
pub fn is_right(kind: QuestionKind, expected: &str, answer: &str) -> bool {
    let lower = answer.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).collect();
    words.contains(&expected)
        && !kind
            .choices()
            .iter()
            .any(|c| *c != expected && words.contains(c))
}

/// Right answers per scored question kind.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    counts: BTreeMap<QuestionKind, (usize, usize)>,
}

impl Tally {
    /// Records one scored answer (describe answers are ignored).
    pub fn record(&mut self, kind: QuestionKind, right: bool) {
        if kind != QuestionKind::Describe {
            let entry = self.counts.entry(kind).or_default();
            entry.0 += usize::from(right);
            entry.1 += 1;
        }
    }

    /// (kind, right, asked, accuracy) for each kind asked.
    pub fn rows(&self) -> Vec<(QuestionKind, usize, usize, f64)> {
        self.counts
            .iter()
            .map(|(&k, &(right, n))| (k, right, n, right as f64 / n.max(1) as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_must_name_only_the_expected_word() {
        assert!(is_right(QuestionKind::Shape, "circle", "circle"));
        assert!(is_right(
            QuestionKind::Shape,
            "circle",
            "It is a red Circle."
        ));
        assert!(!is_right(
            QuestionKind::Shape,
            "circle",
            "a circle or a square"
        ));
        assert!(!is_right(QuestionKind::Shape, "circle", "circles"));
        assert!(!is_right(QuestionKind::Count, "two", "three"));
        assert!(is_right(QuestionKind::Color, "red", "red square"));
        assert!(!is_right(QuestionKind::Color, "red", ""));
    }

    #[test]
    fn tallies_skip_descriptions() {
        let mut tally = Tally::default();
        tally.record(QuestionKind::Shape, true);
        tally.record(QuestionKind::Shape, false);
        tally.record(QuestionKind::Describe, false);
        assert_eq!(tally.rows(), vec![(QuestionKind::Shape, 1, 2, 0.5)]);
        for kind in [
            QuestionKind::Shape,
            QuestionKind::Color,
            QuestionKind::Count,
            QuestionKind::Describe,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                kind.name(),
                "serde and name agree"
            );
        }
    }
}
