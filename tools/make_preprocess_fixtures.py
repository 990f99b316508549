#!/usr/bin/env python3
"""Reference fixtures for dvd's image preprocessing (vision-server/src/preprocess).

Runs the InternVL reference tiling (`dynamic_preprocess` from the InternVL3.5 quick start, the
same in InternVL's dataset.py and lmdeploy) with Pillow, and writes into
vision-server/tests/fixtures/preprocess/:

  grids.json          chosen (columns, rows) for a sweep of image sizes and tile limits
  images/*.png        deterministic test images (PNG: lossless, so decoding is exact)
  tiles.json          for each test image: grid, tile count and the SHA-256 of every tile's RGB
                      bytes after Pillow's bicubic resize (thumbnail last)
  resize/*.bin        raw RGB bytes of a few Pillow resizes, for exact per-pixel comparison
  jpegs.json          small JPEGs (4:2:0, 4:2:2, 4:4:4) and Pillow's decoded pixels

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-preprocess.txt
        .venv/bin/python tools/make_preprocess_fixtures.py
"""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "vision-server/tests/fixtures/preprocess"
IMAGE_SIZE = 448


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    # Verbatim logic of the reference (InternVL quick start).
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def grid_for(width, height, min_num, max_num, image_size=IMAGE_SIZE):
    aspect_ratio = width / height
    target_ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    return find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size)


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=IMAGE_SIZE, use_thumbnail=True):
    orig_width, orig_height = image.size
    cols, rows = grid_for(orig_width, orig_height, min_num, max_num, image_size)
    target_width = image_size * cols
    target_height = image_size * rows
    blocks = cols * rows
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return (cols, rows), processed_images


def test_image(width, height, seed):
    """Smooth colour fields plus edges plus a little noise: compresses well, exercises the filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / (7.0 + seed) + y / 13.0)
    g = 127.5 + 127.5 * np.cos(y / (5.0 + seed) - x / 17.0)
    b = np.where(((x // 23) + (y // 19)) % 2 == 0, 230.0, 25.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0.0, 2.0, size=(height, width, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def main():
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    (OUT / "resize").mkdir(parents=True, exist_ok=True)

    rng = random.Random(20261126)
    sizes = [(448, 448), (800, 600), (600, 800), (1920, 1080), (100, 1000), (900, 448), (1000, 1000)]
    sizes += [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(1500)]
    sizes += [(rng.randint(1, 200), rng.randint(1, 3000)) for _ in range(300)]
    grids = []
    for w, h in sizes:
        for min_num, max_num in [(1, 12), (1, 6), (1, 24), (2, 12), (1, 1)]:
            cols, rows = grid_for(w, h, min_num, max_num)
            grids.append([w, h, min_num, max_num, cols, rows])
    (OUT / "grids.json").write_text(json.dumps(grids, separators=(",", ":")) + "\n")

    cases = []
    for name, (w, h), max_num in [
        ("wide_900x448", (900, 448), 12),
        ("tall_137x451", (137, 451), 12),
        ("square_320x320", (320, 320), 12),
        ("odd_517x333", (517, 333), 6),
        ("tiny_3x2", (3, 2), 12),
    ]:
        img = test_image(w, h, seed=len(cases) + 1)
        img.save(OUT / "images" / f"{name}.png", optimize=True)
        grid, tiles = dynamic_preprocess(img, max_num=max_num)
        cases.append({
            "image": f"images/{name}.png",
            "max_tiles": max_num,
            "grid": list(grid),
            "tiles": [hashlib.sha256(t.tobytes()).hexdigest() for t in tiles],
        })
    (OUT / "tiles.json").write_text(json.dumps(cases, indent=1) + "\n")

    # Exact pixels of single resizes: down, up, and mixed, from the 517x333 image.
    src = Image.open(OUT / "images" / "odd_517x333.png").convert("RGB")
    resizes = []
    for w, h in [(200, 150), (64, 64), (300, 401), (517, 100), (31, 333)]:
        out = src.resize((w, h))
        fname = f"resize/odd_517x333_to_{w}x{h}.bin"
        (OUT / fname).write_bytes(out.tobytes())
        resizes.append({"source": "images/odd_517x333.png", "width": w, "height": h, "rgb": fname})
    (OUT / "resizes.json").write_text(json.dumps(resizes, indent=1) + "\n")

    # JPEG decoding: Pillow (libjpeg-turbo) pixels of small JPEGs in the common subsamplings.
    jpegs = []
    for name, subsampling in [("jpeg_420", 2), ("jpeg_444", 0), ("jpeg_422", 1)]:
        img = test_image(61, 47, seed=7)
        path = OUT / "images" / f"{name}_61x47.jpg"
        img.save(path, quality=90, subsampling=subsampling)
        decoded = Image.open(path).convert("RGB")
        fname = f"resize/{name}_61x47_decoded.bin"
        (OUT / fname).write_bytes(decoded.tobytes())
        jpegs.append({"image": f"images/{name}_61x47.jpg", "rgb": fname})
    (OUT / "jpegs.json").write_text(json.dumps(jpegs, indent=1) + "\n")


if __name__ == "__main__":
    main()
