#!/usr/bin/env python3
"""Writes a random-weight InternVL (HF layout) checkpoint sized for CPU serving benchmarks
(`dvd bench compare`, `dvd bench plan`), with the Python standard library only (no torch), so
any machine can make it.

Default shape (about 0.3-0.5 s of vision and of language work per 448-px single-tile request
on one core of the 2-vCPU benchmark VM): ViT 448 px, patch 14, 384 wide, 6 layers, 6 heads,
MLP 1536; pixel shuffle 0.5 and the projector; Qwen3 512 wide, 8 layers, 8 heads / 4 KV heads
of 64, MLP 1536. The tokenizer, chat template and generation config are copied from the
project's small fixture (language-server/tests/fixtures/model/internvl-dense-hf; 512 ids).

The directory loads with transformers as OpenGVLab's `*-HF` checkpoints (and models/dvd-demo) do:
`InternVLForConditionalGeneration.from_pretrained` reads the weights, and `AutoProcessor` builds an
`InternVLProcessor` from processor_config.json (`image_seq_length` 256 for 448 px tiles),
preprocessor_config.json (448 px tiles, up to 12, Pillow bicubic, ImageNet mean and std) and
tokenizer_config.json, whose `extra_special_tokens` name the processor's start_image_token `<img>`
(501), end_image_token `</img>` (502), context_image_token `<IMG_CONTEXT>` (503) and video_token
`<video>`, which the fixture's tokenizer lacks: it takes the unreachable filler id 497
(`<|fill_497|>`), as in models/dvd-demo, so every other text encodes as before. So
`transformers serve` can serve it (tools/peer/compare_transformers.sh). These files do not touch
the weights: for a seed they are the same bytes as before.

--moe: the language model is Qwen3-MoE with Qwen3-30B-A3B's layer shape (InternVL3.5-30B-A3B):
2048 wide, 32 heads / 4 KV heads of 128, 128 experts, top-8, moe_intermediate_size 768,
norm_topk_prob true, every layer sparse (intermediate_size 6144 in the config, unused, as the
real model has it), 2 layers unless --layers; about 1.2 GB of experts per layer. text_config has
model_type "qwen3_moe" and the expert count as `num_experts` (the published spelling;
transformers 5 writes `num_local_experts`); the experts are per-expert tensors as published
checkpoints have them: model.language_model.layers.{i}.mlp.gate.weight [128, 2048] (router) and
mlp.experts.{e}.{gate_proj,up_proj}.weight [768, 2048], mlp.experts.{e}.down_proj.weight
[2048, 768].

Values: matrices N(0, 0.02), biases N(0, 0.02), norm weights 1 + N(0, 0.02), layer scales
0.1 + N(0, 0.01), drawn with `random.Random(seed)` into a pool of bf16 values that each tensor
reads from its own pseudo-random offset (a benchmark needs realistic magnitudes, not
independent draws). Deterministic for a seed.

Usage: python3 tools/make_bench_checkpoint.py --out /tmp/dvd-bench-ivl [--vision-layers 6]
       [--layers 8] [--seed 0] [--moe]
"""

import argparse
import json
import random
import shutil
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "language-server/tests/fixtures/model/internvl-dense-hf"
COPIED = ("chat_template.jinja", "generation_config.json")
# InternVLProcessor's token names (tokenizer_config.json `extra_special_tokens`), as transformers'
# convert_internvl_weights_to_hf.py writes them; the fixture's tokenizer has the first three.
PROCESSOR_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                    "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
VIDEO_ID = 497  # a filler id no text encodes to (`<|fill_497|>`), as models/dvd-demo has it
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
POOL = 1 << 20


def bf16_pool(rng: random.Random, mean: float, std: float) -> bytes:
    """POOL bf16 values of N(mean, std), little-endian (f32 rounded to nearest bf16)."""
    out = bytearray()
    for _ in range(POOL):
        bits = struct.unpack("<I", struct.pack("<f", rng.gauss(mean, std)))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        out += struct.pack("<H", bits)
    return bytes(out)


def tensors(c: dict) -> list[tuple[str, list[int], str]]:
    """(name, shape, kind) of every tensor; kind picks the value distribution."""
    v, t = c["vision_config"], c["text_config"]
    dv, iv, s, p = v["hidden_size"], v["intermediate_size"], v["image_size"][0], v["patch_size"][0]
    dt, it, hd = t["hidden_size"], t["intermediate_size"], t["head_dim"]
    h, kv, vocab = t["num_attention_heads"], t["num_key_value_heads"], t["vocab_size"]
    out = [
        ("model.vision_tower.embeddings.cls_token", [1, 1, dv], "w"),
        ("model.vision_tower.embeddings.patch_embeddings.projection.weight", [dv, 3, p, p], "w"),
        ("model.vision_tower.embeddings.patch_embeddings.projection.bias", [dv], "b"),
        ("model.vision_tower.embeddings.position_embeddings", [1, 1 + (s // p) ** 2, dv], "w"),
    ]
    for i in range(v["num_hidden_layers"]):
        pre = f"model.vision_tower.encoder.layer.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "projection_layer"):
            out += [(f"{pre}attention.{proj}.weight", [dv, dv], "w"), (f"{pre}attention.{proj}.bias", [dv], "b")]
        out += [(f"{pre}lambda_1", [dv], "s"), (f"{pre}lambda_2", [dv], "s")]
        for norm in ("layernorm_before", "layernorm_after"):
            out += [(f"{pre}{norm}.weight", [dv], "n"), (f"{pre}{norm}.bias", [dv], "b")]
        out += [(f"{pre}mlp.fc1.weight", [iv, dv], "w"), (f"{pre}mlp.fc1.bias", [iv], "b"),
                (f"{pre}mlp.fc2.weight", [dv, iv], "w"), (f"{pre}mlp.fc2.bias", [dv], "b")]
    shuffled = dv * 4
    out += [
        ("model.multi_modal_projector.layer_norm.weight", [shuffled], "n"),
        ("model.multi_modal_projector.layer_norm.bias", [shuffled], "b"),
        ("model.multi_modal_projector.linear_1.weight", [dt, shuffled], "w"),
        ("model.multi_modal_projector.linear_1.bias", [dt], "b"),
        ("model.multi_modal_projector.linear_2.weight", [dt, dt], "w"),
        ("model.multi_modal_projector.linear_2.bias", [dt], "b"),
        ("model.language_model.embed_tokens.weight", [vocab, dt], "w"),
    ]
    for i in range(t["num_hidden_layers"]):
        pre = f"model.language_model.layers.{i}."
        out += [
            (f"{pre}input_layernorm.weight", [dt], "n"),
            (f"{pre}post_attention_layernorm.weight", [dt], "n"),
            (f"{pre}self_attn.q_proj.weight", [h * hd, dt], "w"),
            (f"{pre}self_attn.k_proj.weight", [kv * hd, dt], "w"),
            (f"{pre}self_attn.v_proj.weight", [kv * hd, dt], "w"),
            (f"{pre}self_attn.o_proj.weight", [dt, h * hd], "w"),
            (f"{pre}self_attn.q_norm.weight", [hd], "n"),
            (f"{pre}self_attn.k_norm.weight", [hd], "n"),
        ]
        if t["model_type"] == "qwen3_moe":
            experts, mi = t["num_experts"], t["moe_intermediate_size"]
            out.append((f"{pre}mlp.gate.weight", [experts, dt], "w"))
            for e in range(experts):
                out += [(f"{pre}mlp.experts.{e}.gate_proj.weight", [mi, dt], "w"),
                        (f"{pre}mlp.experts.{e}.up_proj.weight", [mi, dt], "w"),
                        (f"{pre}mlp.experts.{e}.down_proj.weight", [dt, mi], "w")]
        else:
            out += [(f"{pre}mlp.gate_proj.weight", [it, dt], "w"),
                    (f"{pre}mlp.up_proj.weight", [it, dt], "w"),
                    (f"{pre}mlp.down_proj.weight", [dt, it], "w")]
    out += [("model.language_model.norm.weight", [dt], "n"), ("lm_head.weight", [vocab, dt], "w")]
    return out


def moe_text_config(t: dict, layers: int) -> None:
    """Turns the fixture's Qwen3 text_config into Qwen3-30B-A3B's (keys as a Qwen3MoeConfig has them)."""
    for key in ("layer_types", "max_window_layers"):  # Qwen3Config only
        t.pop(key, None)
    t.update(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_attention_heads=32,
             num_key_value_heads=4, head_dim=128, num_hidden_layers=layers, dtype="bfloat16",
             moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
             decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False,
             router_aux_loss_coef=0.001)


def write_processor_files(config: dict, out: Path) -> None:
    """What transformers' AutoProcessor (InternVLProcessor) reads besides the chat template: the
    image processor, the processor (tokens per tile) and the tokenizer with the processor's token
    names and `<video>`."""
    v = config["vision_config"]
    tile = v["image_size"][0]
    tokens_per_tile = round((tile // v["patch_size"][0] * config["downsample_ratio"]) ** 2)
    assert tokens_per_tile == config["image_seq_length"], (tokens_per_tile, config["image_seq_length"])
    pre = json.loads((FIXTURE / "preprocessor_config.json").read_text())
    pre.update(size={"height": tile, "width": tile}, max_patches=12, processor_class="InternVLProcessor",
               do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=1) + "\n")
    (out / "processor_config.json").write_text(json.dumps(
        {"image_seq_length": tokens_per_tile, "processor_class": "InternVLProcessor"}, indent=2) + "\n")
    tok = json.loads((FIXTURE / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    if PROCESSOR_TOKENS["video_token"] not in vocab:
        assert vocab.pop(f"<|fill_{VIDEO_ID}|>") == VIDEO_ID
        vocab[PROCESSOR_TOKENS["video_token"]] = VIDEO_ID
        tok["added_tokens"].append({"id": VIDEO_ID, "content": PROCESSOR_TOKENS["video_token"],
                                    "single_word": False, "lstrip": False, "rstrip": False,
                                    "normalized": False, "special": True})
        tok["added_tokens"].sort(key=lambda t: t["id"])
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    for name in PROCESSOR_TOKENS.values():
        assert name in ids and vocab.get(name, ids[name]) == ids[name] < config["text_config"]["vocab_size"], name
    assert ids["<IMG_CONTEXT>"] == config["image_token_id"]
    (out / "tokenizer.json").write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
    tc = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    tc.update(extra_special_tokens=PROCESSOR_TOKENS, processor_class="InternVLProcessor")
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vision-layers", type=int, default=6)
    ap.add_argument("--layers", type=int, help="language model layers (default: 8, with --moe 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--moe", action="store_true", help="Qwen3-30B-A3B-shaped MoE language model")
    args = ap.parse_args()
    layers = args.layers if args.layers is not None else (2 if args.moe else 8)
    config = json.loads((FIXTURE / "config.json").read_text())
    config["dtype"] = "bfloat16"
    config["image_seq_length"] = 256
    v, t = config["vision_config"], config["text_config"]
    v.update(hidden_size=384, intermediate_size=1536, num_attention_heads=6,
             num_hidden_layers=args.vision_layers, image_size=[448, 448], dtype="bfloat16")
    if args.moe:
        moe_text_config(t, layers)
    else:
        t.update(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4,
                 head_dim=64, num_hidden_layers=layers, dtype="bfloat16", layer_types=["full_attention"] * layers)
    rng = random.Random(args.seed)
    pools = {"w": bf16_pool(rng, 0.0, 0.02), "b": bf16_pool(rng, 0.0, 0.02),
             "n": bf16_pool(rng, 1.0, 0.02), "s": bf16_pool(rng, 0.1, 0.01)}
    specs = tensors(config)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in specs:
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape, kind in specs:
            count = 1
            for d in shape:
                count *= d
            pool, need = pools[kind], 2 * count
            start = 2 * rng.randrange(POOL)
            while need > 0:
                chunk = pool[start:start + need]
                f.write(chunk)
                need -= len(chunk)
                start = 0
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_processor_files(config, args.out)
    for name in COPIED:
        shutil.copy(FIXTURE / name, args.out / name)
    params = offset // 2
    print(f"wrote {args.out}: {len(specs)} tensors, {params / 1e6:.1f} M parameters, {offset / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
