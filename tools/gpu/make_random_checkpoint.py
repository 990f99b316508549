#!/usr/bin/env python3
"""Writes a random-weight InternVL3.5 checkpoint of the real shapes, in the HF layout, so GPU
benchmarks need no download.

The config is built with transformers' config classes and written by `config.save_pretrained`
(with `architectures` and `dtype` set as `model.save_pretrained` would); the tensor names and
shapes come from `InternVLForConditionalGeneration` instantiated on the `meta` device, i.e. the
names `save_pretrained(..., save_original_format=False)` writes: `model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.weight` (untied, as
InternVL3.5 ships it). No model is materialised: each shard's tensors are drawn on --device
(matrices N(0, 0.02); norm weights 1 + N(0, 0.02); biases N(0, 0.02); layer scale 0.1 +
N(0, 0.01)), written, and freed, so memory stays at about one shard. Files: model.safetensors
(one shard) or model-0000i-of-0000N.safetensors + model.safetensors.index.json.

Presets (dims from the InternVL3.5 notes internvl35_spec.md: §2.1 InternViT-300M-448px-V2_5 and
InternViT-6B-448px-V2_5 (45 layers, 3200 wide, 25 heads, MLP 12800, RMSNorm, QK-norm, no qkv
bias), §3 pixel shuffle 0.5 + mlp1, §6.1 Qwen3 table and "Qwen3 common" values, §6.2 untied
lm_head):
  internvl3_5-1b   InternViT-300M + Qwen3-0.6B (1024 wide, 28 layers, 16/8 heads, head_dim 128,
                   MLP 3072)                  1.061 B params, 2.12 GB in bf16, one file
  internvl3_5-8b   InternViT-300M + Qwen3-8B (4096 wide, 36 layers, 32/8 heads, head_dim 128,
                   MLP 12288)                 8.528 B params, 17.06 GB in bf16, 5 shards
  internvl3_5-30b-a3b
                   InternViT-300M + Qwen3-30B-A3B (2048 wide, 48 layers, 32/4 heads, head_dim
                   128, 128 experts, top-8, moe_intermediate 768, norm_topk_prob true; the dense
                   intermediate_size 6144 is in the config, unused)
                                              30.849 B params, 61.70 GB in bf16, 17 shards
  internvl3_5-38b  InternViT-6B + Qwen3-32B (5120 wide, 64 layers, 64/8 heads, head_dim 128,
                   MLP 25600)                 38.390 B params, 76.78 GB in bf16, 20 shards
  internvl3_5-241b-a28b
                   InternViT-6B + Qwen3-235B-A22B (4096 wide, 94 layers, 64/4 heads, head_dim
                   128, 128 experts, top-8, moe_intermediate 1536, norm_topk_prob true; the dense
                   intermediate_size 12288 is in the config, unused)
                                              240.699 B params, 481.40 GB in bf16, 192 shards
(InternViT-6B: 5.536 B of those params.) The MoE presets' experts are written in the fused layout
transformers 5 keeps in memory (and saves with save_original_format=False):
model.language_model.layers.{i}.mlp.experts.gate_up_proj [E, 2 * moe_intermediate, hidden],
mlp.experts.down_proj [E, hidden, moe_intermediate], router mlp.gate.weight [E, hidden] (30B-A3B:
[128, 1536, 2048], [128, 2048, 768], [128, 2048]); their text_config, written by Qwen3MoeConfig,
spells the expert count `num_local_experts`. InternViT-6B's QK-norm weights are
model.vision_tower.encoder.layer.{i}.attention.{q_norm,k_norm}.weight [3200] and its norms have no
bias; mlp1 takes 4 x 3200 = 12800 inputs. `--layers 2 --vision-layers 1` keeps a few GB (38B:
5.5 GB, 241B-A28B: 12.8 GB in bf16; the two vocab matrices alone are 3.1 / 2.5 GB).

The tokenizer, chat template and generation config are copied from the project's small test
fixture (language-server/tests/fixtures/model/internvl-dense-hf: 512-token vocabulary, all ids
below 151936); image_token_id / eos / pad in config.json are that tokenizer's <IMG_CONTEXT>,
<|im_end|> and <|endoftext|> ids. preprocessor_config.json: 448 px tiles, 1..12 tiles.

Usage:  python tools/gpu/make_random_checkpoint.py --preset internvl3_5-8b --out /tmp/ivl8b
        [--layers N] [--vision-layers N] [--dtype bf16|f16|f32] [--seed 0]
        [--device auto|cpu|cuda] [--shard-gb 4]
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "language-server/tests/fixtures/model/internvl-dense-hf"
COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}

# InternViT-300M-448px-V2_5 (spec §2.1).
VIT_300M = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    image_size=448, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, norm_type="layer_norm",
    attention_bias=True, use_qk_norm=False, layer_scale_init_value=0.1,
    use_absolute_position_embeddings=True, use_mean_pooling=True, use_mask_token=False,
)
# InternViT-6B-448px-V2_5 (spec §2.1: 48 blocks less the last 3; RMSNorm, QK-norm over the full
# width, no qkv bias; head_dim 128).
VIT_6B = dict(
    VIT_300M, hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
    norm_type="rms_norm", attention_bias=False, use_qk_norm=True,
)
# Qwen3 language models (spec §6.1; common: silu, rms_norm_eps 1e-6, no attention bias,
# rope_theta 1e6, max_position_embeddings 40960, no sliding window).
QWEN3_COMMON = dict(
    vocab_size=151936, head_dim=128, hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False,
    max_position_embeddings=40960, use_sliding_window=False, tie_word_embeddings=False,
)
# Each preset: its ViT (`vit`) and its Qwen3 LLM's fields (`moe` for the sparse ones).
PRESETS = {
    "internvl3_5-1b": dict(  # Qwen3-0.6B
        vit=VIT_300M, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        intermediate_size=3072, rope_theta=1e6),
    "internvl3_5-8b": dict(  # Qwen3-8B
        vit=VIT_300M, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=12288, rope_theta=1e6),
    "internvl3_5-30b-a3b": dict(  # Qwen3-30B-A3B (spec §6.1: the dense intermediate_size is unused)
        vit=VIT_300M, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
        intermediate_size=6144, rope_theta=1e6, moe=dict(
            moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[])),
    "internvl3_5-38b": dict(  # Qwen3-32B
        vit=VIT_6B, hidden_size=5120, num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8,
        intermediate_size=25600, rope_theta=1e6),
    "internvl3_5-241b-a28b": dict(  # Qwen3-235B-A22B (the dense intermediate_size is unused)
        vit=VIT_6B, hidden_size=4096, num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4,
        intermediate_size=12288, rope_theta=1e6, moe=dict(
            moe_intermediate_size=1536, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[])),
}


def special_ids(tokenizer_json: Path):
    added = {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text())["added_tokens"]}
    need = ("<IMG_CONTEXT>", "<img>", "</img>", "<|im_end|>", "<|endoftext|>")
    missing = [t for t in need if t not in added]
    if missing:
        raise SystemExit(f"{tokenizer_json}: no {missing}")
    return added


def build_config(preset, layers, vision_layers, dtype, ids):
    llm = dict(PRESETS[preset])
    theta = llm.pop("rope_theta")
    moe = llm.pop("moe", None)
    vit = dict(llm.pop("vit"))
    if layers is not None:
        llm["num_hidden_layers"] = layers
    if vision_layers is not None:
        vit["num_hidden_layers"] = vision_layers
    common = dict(
        **QWEN3_COMMON, **llm, rope_parameters={"rope_type": "default", "rope_theta": theta}, bos_token_id=None,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    if moe:
        text = Qwen3MoeConfig(**common, **moe)
    else:
        text = Qwen3Config(**common, max_window_layers=llm["num_hidden_layers"])
    tile_tokens = (vit["image_size"] // vit["patch_size"]) ** 2 // 4  # 256 after pixel shuffle 0.5
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(**vit), text_config=text,
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=tile_tokens, downsample_ratio=0.5,
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    for c in (config, config.vision_config, config.text_config):
        c.dtype = dtype
    return config


def tensor_specs(config):
    """(name, shape) in state_dict order, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    specs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert any(k == "lm_head.weight" for k, _ in specs), "expected an untied lm_head"
    return specs


def fill(name, shape, dtype, device, gen):
    t = torch.randn(shape, dtype=torch.float32, device=device, generator=gen)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("lambda_1", "lambda_2"):  # layer scale
        t.mul_(0.01).add_(0.1)
    elif leaf == "weight" and len(shape) == 1:  # LayerNorm / RMSNorm weights (incl. q/k norm)
        t.mul_(0.02).add_(1.0)
    else:  # matrices, conv, embeddings, cls / position embeddings, biases
        t.mul_(0.02)
    return t.to(dtype)


def plan_shards(specs, dtype, shard_bytes):
    size = torch.tensor([], dtype=dtype).element_size()
    shards, cur, cur_bytes = [], [], 0
    for name, shape in specs:
        n = size
        for d in shape:
            n *= d
        if cur and cur_bytes + n > shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape, n))
        cur_bytes += n
    if cur:
        shards.append(cur)
    return shards


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="internvl3_5-8b")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, help="language model layers (default: the preset's)")
    ap.add_argument("--vision-layers", type=int, help="ViT layers (default: the preset's, 24 or 45)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--shard-gb", type=float, default=4.0, help="most bytes per shard, in 1e9")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()

    ids = special_ids(FIXTURE / "tokenizer.json")
    config = build_config(args.preset, args.layers, args.vision_layers, dtype, ids)
    specs = tensor_specs(config)
    shards = plan_shards(specs, dtype, int(args.shard_gb * 1e9))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    config.save_pretrained(out)
    for f in COPIED:
        shutil.copyfile(FIXTURE / f, out / f)
    tile = config.vision_config.image_size[0]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor", "crop_to_patches": True, "min_patches": 1,
        "max_patches": 12, "size": {"height": tile, "width": tile}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": True}, indent=1) + "\n")

    gen = torch.Generator(device=device).manual_seed(args.seed)
    weight_map, total, params = {}, 0, 0
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape, nbytes in shard:
            tensors[name] = fill(name, shape, dtype, device, gen).cpu()
            weight_map[name] = fname
            total += nbytes
            params += tensors[name].numel()
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
        print(f"  {fname}: {len(shard)} tensors, {sum(n for *_, n in shard) / 1e9:.2f} GB", flush=True)
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total, "total_parameters": params}, "weight_map": weight_map},
            indent=2) + "\n")
    tc, vc = config.text_config, config.vision_config
    print(json.dumps({
        "out": str(out), "preset": args.preset, "device": device, "dtype": args.dtype,
        "llm_layers": tc.num_hidden_layers, "vision_layers": vc.num_hidden_layers,
        "parameters": params, "bytes": total, "shards": len(shards),
        "image_token_id": config.image_token_id, "seconds": round(time.perf_counter() - t0, 2),
    }))


if __name__ == "__main__":
    main()
