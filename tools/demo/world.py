"""The demo model's synthetic world (issue 9): plain canvases with 1 to 3 coloured shapes, the
questions asked about them and the answers expected.

The same world is implemented in Rust (`dvd demo images`, the dvd-demo-world crate in demo-world/)
so that anyone can generate fresh test images; demo-world/tests/python_twin.rs runs this file and
fails when the two drift apart. Both follow this specification:

- canvas: width and height uniform integers in [224, 1024] with width / height in [0.5, 2];
  background white (255, 255, 255) or light grey (230, 230, 230);
- 1 to 3 filled shapes whose bounding boxes do not overlap: circle, square (axis-aligned) or
  triangle (pointing up), bounding-box side 25% to 60% of the shorter image side;
- colours red (220, 40, 40), green (40, 170, 60), blue (40, 80, 220), yellow (230, 200, 30);
- a pixel belongs to a shape when its centre (x + 0.5, y + 0.5) lies inside it (no antialiasing).

Only `render` needs numpy: everything else is standard library, so the Rust twin's test can import
this file with a bare python3.
"""

import random

SHAPES = ["circle", "square", "triangle"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
BACKGROUNDS = [(255, 255, 255), (230, 230, 230)]
NUMBERS = ["one", "two", "three"]

SHAPE_QUESTION = "What shape is in the image?"
COLOUR_QUESTION = "What color is the shape?"
COUNT_QUESTION = "How many shapes are there?"
DESCRIBE_QUESTION = "Describe the image."


def sample_scene(rng: random.Random):
    """A scene: (width, height, background, [(kind, colour, x0, y0, side)...]) sorted by x0."""
    while True:
        width = rng.randint(224, 1024)
        height = rng.randint(max(224, (width + 1) // 2), min(1024, 2 * width))
        background = rng.choice(BACKGROUNDS)
        count = rng.randint(1, 3)
        short = min(width, height)
        lo, hi = -(-short * 25 // 100), short * 60 // 100
        shapes = []
        for _ in range(count):
            for _attempt in range(100):
                side = rng.randint(lo, hi)
                x0 = rng.randint(0, width - side)
                y0 = rng.randint(0, height - side)
                if all(disjoint((x0, y0, side), (s[2], s[3], s[4])) for s in shapes):
                    shapes.append((rng.choice(SHAPES), rng.choice(list(COLOURS)), x0, y0, side))
                    break
            else:
                break
        if len(shapes) == count:
            shapes.sort(key=lambda s: (s[2], s[3]))
            return width, height, background, shapes


def disjoint(a, b):
    """Whether two boxes (x0, y0, side) share no pixel."""
    ax, ay, a_side = a
    bx, by, b_side = b
    return ax + a_side <= bx or bx + b_side <= ax or ay + a_side <= by or by + b_side <= ay


def render(scene) -> "np.ndarray":
    """The scene as an RGB uint8 array [height, width, 3]."""
    import numpy as np

    width, height, background, shapes = scene
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background
    for kind, colour, x0, y0, side in shapes:
        ys = np.arange(y0, y0 + side, dtype=np.float64)[:, None] + 0.5
        xs = np.arange(x0, x0 + side, dtype=np.float64)[None, :] + 0.5
        if kind == "square":
            inside = np.ones((side, side), dtype=bool)
        elif kind == "circle":
            c, r = side / 2.0, side / 2.0
            inside = (xs - x0 - c) ** 2 + (ys - y0 - c) ** 2 <= r * r
        else:  # triangle: apex at the top centre, base along the bottom edge
            inside = np.abs(xs - x0 - side / 2.0) <= (ys - y0) / 2.0
        region = image[y0:y0 + side, x0:x0 + side]
        region[inside] = COLOURS[colour]
    return image


def describe(scene) -> str:
    """`a red circle`, `a red circle and a blue square`, `a red circle, a blue square and a ...`."""
    parts = [f"a {colour} {kind}" for kind, colour, *_ in scene[3]]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def questions(scene):
    """(question, answer) pairs the scene supports; the first three kinds are scored."""
    shapes = scene[3]
    pairs = [(COUNT_QUESTION, NUMBERS[len(shapes) - 1]), (DESCRIBE_QUESTION, describe(scene))]
    if len(shapes) == 1:
        pairs += [(SHAPE_QUESTION, shapes[0][0]), (COLOUR_QUESTION, shapes[0][1])]
    return pairs


# A fixed scene whose picture the Rust twin must reproduce pixel for pixel (demo-world/src/render.rs
# and demo-world/tests/python_twin.rs check it against demo-world/tests/fixtures/world-scene.png).
FIXTURE_SCENE = (301, 203, (230, 230, 230), [
    ("circle", "red", 10, 20, 91), ("square", "blue", 120, 31, 70), ("triangle", "green", 200, 50, 95),
    ("triangle", "yellow", 2, 150, 40)])


if __name__ == "__main__":
    from pathlib import Path

    from PIL import Image

    out = Path(__file__).resolve().parents[2] / "demo-world/tests/fixtures/world-scene.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(FIXTURE_SCENE)).save(out)
    print(f"wrote {out}")
