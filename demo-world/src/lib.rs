//! The demo model's synthetic world (issue 9): plain canvases with one to three coloured shapes,
//! the questions asked about them and how an answer is scored. `dvd demo` draws fresh pictures
//! with it and scores the demo model's answers.
//!
//! `tools/demo/world.py` is the Python twin the model was trained with; `tests/python_twin.rs`
//! runs it and fails when the two drift apart (vocabularies, colours, question texts, scene
//! sampling, descriptions, the questions of a scene, pixels). Both follow this specification:
//!
//! - canvas: width and height uniform in 224..=1024 px with width / height in [0.5, 2];
//!   background white (255, 255, 255) or light grey (230, 230, 230);
//! - 1 to 3 filled shapes whose bounding boxes do not overlap: circle, square (axis-aligned) or
//!   triangle (pointing up), bounding-box side 25% to 60% of the shorter image side;
//! - colours red (220, 40, 40), green (40, 170, 60), blue (40, 80, 220), yellow (230, 200, 30);
//! - a pixel belongs to a shape when its centre lies inside it (no antialiasing).

mod questions;
mod render;

pub use questions::{Question, QuestionKind, Tally, is_right};
pub use render::render;

use rand::Rng;

/// A shape's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeKind {
    /// A disc filling its bounding box.
    Circle,
    /// The bounding box itself.
    Square,
    /// Apex at the top centre, base along the bottom edge.
    Triangle,
}

impl ShapeKind {
    /// Every kind, in the order answers list them.
    pub const ALL: [Self; 3] = [Self::Circle, Self::Square, Self::Triangle];

    /// The word the model answers with.
    pub fn word(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
        }
    }
}

/// A shape's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// (220, 40, 40)
    Red,
    /// (40, 170, 60)
    Green,
    /// (40, 80, 220)
    Blue,
    /// (230, 200, 30)
    Yellow,
}

impl Colour {
    /// Every colour.
    pub const ALL: [Self; 4] = [Self::Red, Self::Green, Self::Blue, Self::Yellow];

    /// The word the model answers with.
    pub fn word(self) -> &'static str {
        match self {
            Self::Red => "red",
            Self::Green => "green",
            Self::Blue => "blue",
            Self::Yellow => "yellow",
        }
    }

    /// The exact RGB value painted.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Self::Red => [220, 40, 40],
            Self::Green => [40, 170, 60],
            Self::Blue => [40, 80, 220],
            Self::Yellow => [230, 200, 30],
        }
    }
}

/// The two backgrounds.
pub const BACKGROUNDS: [[u8; 3]; 2] = [[255, 255, 255], [230, 230, 230]];

/// One shape: kind, colour and its square bounding box (top-left corner and side, pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// What it is.
    pub kind: ShapeKind,
    /// What colour it is.
    pub colour: Colour,
    /// Left edge of the bounding box.
    pub x: u32,
    /// Top edge of the bounding box.
    pub y: u32,
    /// Side of the bounding box.
    pub side: u32,
}

impl Shape {
    /// Whether the two bounding boxes share no pixel.
    pub fn disjoint(&self, other: &Shape) -> bool {
        self.x + self.side <= other.x
            || other.x + other.side <= self.x
            || self.y + self.side <= other.y
            || other.y + other.side <= self.y
    }
}

/// A picture of the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scene {
    /// Canvas width, pixels.
    pub width: u32,
    /// Canvas height, pixels.
    pub height: u32,
    /// Background RGB.
    pub background: [u8; 3],
    /// The shapes, left to right (by bounding-box left edge, then top edge).
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// A random scene with `shapes` shapes (1..=3), or a uniformly random count when `None`.
    pub fn sample(rng: &mut impl Rng, shapes: Option<usize>) -> Self {
        loop {
            let width = rng.random_range(224..=1024u32);
            let height = rng.random_range(224.max(width.div_ceil(2))..=1024.min(2 * width));
            let background = BACKGROUNDS[rng.random_range(0..BACKGROUNDS.len())];
            let count = shapes.map_or_else(|| rng.random_range(1..=3), |n| n.clamp(1, 3));
            let short = width.min(height);
            let (lo, hi) = ((short * 25).div_ceil(100), short * 60 / 100);
            let mut placed: Vec<Shape> = Vec::with_capacity(count);
            for _ in 0..count {
                for _attempt in 0..100 {
                    let side = rng.random_range(lo..=hi);
                    let x = rng.random_range(0..=width - side);
                    let y = rng.random_range(0..=height - side);
                    let kind = ShapeKind::ALL[rng.random_range(0..ShapeKind::ALL.len())];
                    let colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
                    let shape = Shape {
                        kind,
                        colour,
                        x,
                        y,
                        side,
                    };
                    if placed.iter().all(|s| s.disjoint(&shape)) {
                        placed.push(shape);
                        break;
                    }
                }
            }
            if placed.len() == count {
                placed.sort_by_key(|s| (s.x, s.y));
                return Self {
                    width,
                    height,
                    background,
                    shapes: placed,
                };
            }
        }
    }

    /// `a red circle`, `a red circle and a blue square`, `a red circle, a blue square and ...`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .shapes
            .iter()
            .map(|s| format!("a {} {}", s.colour.word(), s.kind.word()))
            .collect();
        match parts.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_list_shapes_left_to_right() {
        let shape = |kind, colour, x| Shape {
            kind,
            colour,
            x,
            y: 0,
            side: 10,
        };
        let mut scene = Scene {
            width: 300,
            height: 300,
            background: BACKGROUNDS[0],
            shapes: vec![shape(ShapeKind::Circle, Colour::Red, 0)],
        };
        assert_eq!(scene.describe(), "a red circle");
        scene
            .shapes
            .push(shape(ShapeKind::Square, Colour::Blue, 20));
        assert_eq!(scene.describe(), "a red circle and a blue square");
        scene
            .shapes
            .push(shape(ShapeKind::Triangle, Colour::Green, 40));
        assert_eq!(
            scene.describe(),
            "a red circle, a blue square and a green triangle"
        );
    }
}
