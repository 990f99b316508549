#!/usr/bin/env python3
"""PyTorch baseline for `dvd bench vision`: the same checkpoint and image, measured with Pillow
(the reference preprocessing) and transformers (the reference encoder) on this machine's CPU.

Builds a mid-size random InternVL vision checkpoint (InternViT-300M style at width 512, 12
layers, 8 heads, MLP 2048, 448 px tiles; mlp1 to an LLM width of 1024) in HF layout, writes a
deterministic 1920x1080 JPEG beside it, then times:
  preprocess   Image.open + convert("RGB") + dynamic_preprocess (max 12 tiles) + normalisation
  encode       model.get_image_features on a batch of tiles (eager and sdpa attention)
and prints one JSON object. Then run, on the same directory:
  dvd bench vision --model DIR --image DIR/bench.jpg --tiles 4 --rounds 5 --json

Usage:  .venv/bin/python tools/bench_vision_torch.py [--out DIR] [--tiles 4] [--rounds 5]
(requirements: tools/requirements-vision.txt)
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen3Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_preprocess_fixtures import dynamic_preprocess  # noqa: E402
from make_vision_fixtures import MEAN, STD, rerandomise  # noqa: E402

TILE = 448


def build(out: Path):
    vision = InternVLVisionConfig(
        hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048,
        image_size=TILE, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, layer_scale_init_value=0.1,
        norm_type="layer_norm", attention_bias=True, use_qk_norm=False, use_mean_pooling=True)
    text = Qwen3Config(vocab_size=64, hidden_size=1024, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=8, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=61, image_seq_length=256,
                            downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
                            vision_feature_select_strategy="default", tie_word_embeddings=False)
    model = InternVLForConditionalGeneration._from_config(config, dtype=torch.float32).eval()
    rerandomise(model, 5)
    model.save_pretrained(out, save_original_format=False)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"crop_to_patches": True, "min_patches": 1, "max_patches": 12, "size": {"height": TILE, "width": TILE}}))
    return model


def photo(out: Path):
    rng = np.random.default_rng(3)
    h, w = 1080, 1920
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / 97), 128 + 100 * np.cos(yy / 61), (xx + yy) / (w + h) * 255], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    path = out / "bench.jpg"
    Image.fromarray(img, "RGB").save(path, quality=90)
    return path


def pil_preprocess(path):
    image = Image.open(path).convert("RGB")
    _, tiles = dynamic_preprocess(image, 1, 12, TILE, True)
    return np.stack([((np.asarray(t, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1) for t in tiles])


def timed(fn, rounds):
    fn()  # warm-up
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), (min(samples), max(samples))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/dvd-vision-bench"))
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(args.out)
    jpeg = photo(args.out)
    pre_ms, pre_range = timed(lambda: pil_preprocess(jpeg), args.rounds)
    pv = torch.from_numpy(pil_preprocess(jpeg))
    batch = pv[torch.arange(args.tiles) % pv.shape[0]].contiguous()
    report = {"torch": torch.__version__, "threads": args.threads, "image_tiles": int(pv.shape[0]),
              "preprocess_ms": pre_ms, "preprocess_range_ms": pre_range, "batch_tiles": args.tiles}
    for attn in ("eager", "sdpa"):
        model.model.vision_tower.config._attn_implementation = attn
        model.config.vision_config._attn_implementation = attn
        with torch.inference_mode():
            ms, rng = timed(lambda: model.get_image_features(pixel_values=batch), args.rounds)
        report[f"encode_{attn}_ms"] = ms
        report[f"encode_{attn}_range_ms"] = rng
        report[f"tiles_per_s_{attn}"] = args.tiles / (ms / 1e3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
