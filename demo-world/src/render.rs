//! Painting a scene: each pixel whose centre lies inside a shape takes its colour.

use image::{Rgb, RgbImage};

use super::{Scene, ShapeKind};

/// The scene as an RGB image (the same pixels as `tools/demo/world.py`'s `render`).
pub fn render(scene: &Scene) -> RgbImage {
    let mut image = RgbImage::from_pixel(scene.width, scene.height, Rgb(scene.background));
    for shape in &scene.shapes {
        let half = f64::from(shape.side) / 2.0;
        let (x0, y0) = (f64::from(shape.x), f64::from(shape.y));
        for py in shape.y..shape.y + shape.side {
            let cy = f64::from(py) + 0.5;
            for px in shape.x..shape.x + shape.side {
                let cx = f64::from(px) + 0.5;
                let inside = match shape.kind {
                    ShapeKind::Square => true,
                    ShapeKind::Circle => {
                        let (dx, dy) = (cx - x0 - half, cy - y0 - half);
                        dx * dx + dy * dy <= half * half
                    }
                    ShapeKind::Triangle => (cx - x0 - half).abs() <= (cy - y0) / 2.0,
                };
                if inside {
                    image.put_pixel(px, py, Rgb(shape.colour.rgb()));
                }
            }
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BACKGROUNDS, Colour, Shape};

    fn one(kind: ShapeKind) -> RgbImage {
        let shape = Shape {
            kind,
            colour: Colour::Blue,
            x: 10,
            y: 20,
            side: 40,
        };
        render(&Scene {
            width: 100,
            height: 80,
            background: BACKGROUNDS[1],
            shapes: vec![shape],
        })
    }

    fn painted(image: &RgbImage) -> usize {
        image.pixels().filter(|p| p.0 == Colour::Blue.rgb()).count()
    }

    #[test]
    fn shapes_cover_their_expected_areas() {
        // Square: the whole box; circle: about pi/4 of it; triangle: about half.
        assert_eq!(painted(&one(ShapeKind::Square)), 1600);
        let circle = painted(&one(ShapeKind::Circle)) as f64 / 1600.0;
        assert!(
            (circle - std::f64::consts::FRAC_PI_4).abs() < 0.02,
            "{circle}"
        );
        let triangle = painted(&one(ShapeKind::Triangle)) as f64 / 1600.0;
        assert!((triangle - 0.5).abs() < 0.03, "{triangle}");
    }

    #[test]
    fn pixels_equal_the_python_twin() {
        // tools/demo/world.py's FIXTURE_SCENE, rendered by Python into the fixture.
        let shape = |kind, colour, x, y, side| Shape {
            kind,
            colour,
            x,
            y,
            side,
        };
        let scene = Scene {
            width: 301,
            height: 203,
            background: BACKGROUNDS[1],
            shapes: vec![
                shape(ShapeKind::Circle, Colour::Red, 10, 20, 91),
                shape(ShapeKind::Square, Colour::Blue, 120, 31, 70),
                shape(ShapeKind::Triangle, Colour::Green, 200, 50, 95),
                shape(ShapeKind::Triangle, Colour::Yellow, 2, 150, 40),
            ],
        };
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/world-scene.png"
        );
        let python = image::open(path).unwrap().to_rgb8();
        assert!(render(&scene) == python, "render differs from {path}");
    }

    #[test]
    fn triangles_point_up_and_nothing_leaves_the_box() {
        let image = one(ShapeKind::Triangle);
        let blue = |x, y| image.get_pixel(x, y).0 == Colour::Blue.rgb();
        assert!(blue(29, 21) && blue(30, 21), "apex at the top centre");
        assert!(blue(10, 59) && blue(49, 59), "base along the bottom edge");
        assert!(!blue(10, 21) && !blue(49, 21));
        assert!(!blue(9, 59) && !blue(50, 59) && !blue(30, 60) && !blue(30, 19));
        assert_eq!(image.get_pixel(0, 0).0, BACKGROUNDS[1]);
    }
}
