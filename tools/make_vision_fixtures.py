#!/usr/bin/env python3
"""Reference fixtures for dvd's vision model (vision-server/src/model).

Builds small random InternVL3.5-style checkpoints with transformers (InternViT + pixel shuffle +
mlp1 projector, a tiny Qwen3 language model beside them so loaders must pick the vision tensors),
re-randomises every parameter, writes them in the published layouts and records the reference
outputs. transformers has no Flash (ViR) model, so the router reference is written here from the
InternVL3.5-Flash remote code's semantics (mlp2, CrossAttentionPooling reusing attn2/norm2 for its
last two steps, Gating, quantile + absolute threshold on softmax[:, 0]).

Writes into vision-server/tests/fixtures/model/:

  image.png                      a 150x100 test image (7 tiles of 56 px with max 6 tiles)
  pixel_values.safetensors       the reference tiling of image.png (original dynamic_preprocess)
  vit300m-hf/                    300M-style ViT, HF layout (model.vision_tower.*), one f32 file,
                                 preprocessor_config.json with max_patches 6
  vit300m-hf-legacy-f16/         300M-style, legacy HF names (vision_tower.*, language_model.*),
                                 f16 on disk, use_mean_pooling false (final LayerNorm), 12 tiles max
  vit6b-custom-bf16/             6B-style ViT (RMSNorm, qk-norm, no qkv bias), GitHub layout
                                 (vision_model.*, fused attn.qkv, mlp1.*), bf16 in 3 shards + index,
                                 trimmed vision_config (6B class defaults fill the rest),
                                 pos-embed grid 2x2 resized to 4x4, select_layer -2
  flash-custom/                  300M-style + ViR (mlp2, pooling_before_gating, gating), GitHub
                                 layout, one f32 file, flash_mode on
  */reference.safetensors        features [tokens, H] (f32), tokens_per_tile (i64), and for
                                 flash-custom the router's probs and the ViR-off features
  flash-custom/decisions.json    ViR decisions for several threshold pairs

Weights stored in bf16/f16 are rounded in the reference model too, so the reference is the f32
forward pass of exactly the stored weights.

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-vision.txt
        .venv/bin/python tools/make_vision_fixtures.py
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    Qwen3Config,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_preprocess_fixtures import IMAGE_SIZE as _UNUSED  # noqa: E402,F401
from make_preprocess_fixtures import dynamic_preprocess  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "vision-server/tests/fixtures/model"
TILE = 56  # 4x4 patches of 14 px
MAX_TILES = 6
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
VIT = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)
LLM_HIDDEN = 48

torch.set_num_threads(2)


# ----------------------------------------------------------------------------- inputs
def test_image():
    rng = np.random.default_rng(7)
    h, w = 100, 150
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), ((xx // 9 + yy // 13) % 2) * 200], -1)
    noise = rng.integers(-40, 41, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def pixel_values_of(image, max_tiles):
    _, tiles = dynamic_preprocess(image, 1, max_tiles, TILE, True)
    arr = [((np.asarray(t, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1) for t in tiles]
    return torch.from_numpy(np.stack(arr)).contiguous()


# ----------------------------------------------------------------------------- models
def rerandomise(module, seed):
    """Every parameter gets random values (transformers' init zeroes some and hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(k in name for k in ("position_embeddings", "cls_token", "query_token")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and ("norm" in name or name.endswith(("0.weight", "5.weight"))):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)


def build(variant, vit_image_size, layers, seed, use_mean_pooling=True, feature_layer=-1):
    vision_kw = dict(
        VIT, num_hidden_layers=layers, image_size=vit_image_size, patch_size=14, hidden_act="gelu",
        layer_norm_eps=1e-6, layer_scale_init_value=0.1, use_absolute_position_embeddings=True,
        use_mean_pooling=use_mean_pooling, use_mask_token=False,
    )
    if variant == "300m":
        vision_kw.update(norm_type="layer_norm", attention_bias=True, use_qk_norm=False)
    else:
        vision_kw.update(norm_type="rms_norm", attention_bias=False, use_qk_norm=True)
    text = Qwen3Config(
        vocab_size=64, hidden_size=LLM_HIDDEN, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False,
        eos_token_id=62, pad_token_id=0,
    )
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(**vision_kw), text_config=text, image_token_id=61,
        image_seq_length=(TILE // 14) ** 2 // 4, downsample_ratio=0.5, projector_hidden_act="gelu",
        vision_feature_layer=feature_layer, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration._from_config(
        config, attn_implementation="eager", dtype=torch.float32
    ).eval()
    rerandomise(model, seed)
    return model


def round_to(model, dtype):
    """Rounds every weight to `dtype` (and back), as storing it in that dtype would."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def features(model, pv):
    with torch.no_grad():
        return model.get_image_features(pixel_values=pv).pooler_output


def hf_state_dict(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- layouts
def to_legacy_hf(sd):
    out = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            k = "language_model.model." + k[len("model.language_model."):]
        elif k == "lm_head.weight":
            k = "language_model.lm_head.weight"
        elif k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


def to_custom(sd, layers):
    """HF names -> GitHub (InternVLChatModel) names, fusing q/k/v into attn.qkv."""
    out = {}
    vt = "model.vision_tower."
    out["vision_model.embeddings.class_embedding"] = sd[vt + "embeddings.cls_token"]
    out["vision_model.embeddings.position_embedding"] = sd[vt + "embeddings.position_embeddings"]
    for s in ("weight", "bias"):
        out[f"vision_model.embeddings.patch_embedding.{s}"] = sd[vt + f"embeddings.patch_embeddings.projection.{s}"]
    for i in range(layers):
        src, dst = vt + f"encoder.layer.{i}.", f"vision_model.encoder.layers.{i}."
        for s in ("weight", "bias"):
            parts = [src + f"attention.{p}_proj.{s}" for p in "qkv"]
            if all(p in sd for p in parts):
                out[dst + f"attn.qkv.{s}"] = torch.cat([sd[p] for p in parts], 0)
        renames = {
            "attention.projection_layer": "attn.proj", "attention.q_norm": "attn.q_norm",
            "attention.k_norm": "attn.k_norm", "layernorm_before": "norm1", "layernorm_after": "norm2",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        }
        for a, b in renames.items():
            for s in ("weight", "bias"):
                if src + f"{a}.{s}" in sd:
                    out[dst + f"{b}.{s}"] = sd[src + f"{a}.{s}"]
        out[dst + "ls1"] = sd[src + "lambda_1"]
        out[dst + "ls2"] = sd[src + "lambda_2"]
    for a, b in {"layer_norm": "0", "linear_1": "1", "linear_2": "3"}.items():
        for s in ("weight", "bias"):
            out[f"mlp1.{b}.{s}"] = sd[f"model.multi_modal_projector.{a}.{s}"]
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            out["language_model.model." + k[len("model.language_model."):]] = v
    out["language_model.lm_head.weight"] = sd["lm_head.weight"]
    return out


def custom_config(vision_config, extra):
    llm = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64,
        "hidden_size": LLM_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "tie_word_embeddings": False,
    }
    cfg = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "vision_config": dict(vision_config, architectures=["InternVisionModel"], model_type="intern_vit_6b"),
        "llm_config": llm, "select_layer": -1, "force_image_size": TILE, "downsample_ratio": 0.5,
        "template": "internvl2_5", "dynamic_image_size": True, "use_thumbnail": True, "ps_version": "v2",
        "min_dynamic_patch": 1, "max_dynamic_patch": MAX_TILES, "tie_word_embeddings": False,
    }
    cfg.update(extra)
    return cfg


def save_sharded(sd, out, shards, dtype):
    names = sorted(sd)
    per = (len(names) + shards - 1) // shards
    weight_map, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n].to(dtype).contiguous() for n in names[s * per:(s + 1) * per]}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def write_reference(out, feats, tokens_per_tile, **extra):
    tensors = {
        "features": feats.reshape(-1, feats.shape[-1]).contiguous(),
        "tokens_per_tile": torch.tensor(tokens_per_tile, dtype=torch.int64),
    }
    tensors.update({k: v.contiguous() for k, v in extra.items()})
    save_file(tensors, str(out / "reference.safetensors"))


def fresh(name):
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# ----------------------------------------------------------------------------- ViR reference
class CrossAttentionPooling(torch.nn.Module):
    def __init__(self, dim, num_heads=16):
        super().__init__()
        self.query_token = torch.nn.Parameter(torch.randn(1, dim))
        for k in range(1, 5):
            setattr(self, f"attn{k}", torch.nn.MultiheadAttention(dim, num_heads, batch_first=True))
            setattr(self, f"norm{k}", torch.nn.LayerNorm(dim))

    def forward(self, x):  # x: [T, N, D]
        q = self.query_token.unsqueeze(0).expand(x.shape[0], -1, -1)
        o = self.norm1(self.attn1(q, x, x, need_weights=False)[0])
        # The reference reuses attn2/norm2 for the third and fourth steps.
        o = self.norm2(self.attn2(o, x, x, need_weights=False)[0])
        o = self.norm2(self.attn2(o, x, x, need_weights=False)[0])
        o = self.norm2(self.attn2(o, x, x, need_weights=False)[0])
        return o.squeeze(1)


class Gating(torch.nn.Module):
    def __init__(self, dim, expansion=4):
        super().__init__()
        for k in range(1, 5):
            setattr(self, f"block{k}", torch.nn.Sequential(
                torch.nn.Linear(dim, expansion * dim), torch.nn.GELU(), torch.nn.Dropout(0.1),
                torch.nn.Linear(expansion * dim, dim), torch.nn.Dropout(0.1), torch.nn.LayerNorm(dim)))
        self.gate = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, 2))

    def forward(self, x):
        for k in range(1, 5):
            x = x + getattr(self, f"block{k}")(x)
        return torch.softmax(self.gate(x), dim=-1)


class Flash(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.mlp2 = torch.nn.Sequential(
            torch.nn.LayerNorm(16 * d), torch.nn.Linear(16 * d, 2 * h), torch.nn.GELU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(2 * h, 2 * h), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(2 * h, h))
        self.pooling_before_gating = CrossAttentionPooling(d)
        self.gating = Gating(d)


def decide(p, relative, absolute):
    thr = torch.quantile(p.float(), relative)
    return ((p > thr) & (p >= absolute)).tolist(), float(thr)


def flash_fixture(pv):
    model = build("300m", TILE, 2, seed=41)
    flash = Flash(VIT["hidden_size"], LLM_HIDDEN).eval()
    rerandomise(flash, 42)
    with torch.no_grad():
        x = model.model.vision_tower(pixel_values=pv).last_hidden_state[:, 1:, :]
        t, n, d = x.shape
        g = int(n ** 0.5)
        grid = x.reshape(t, g, g, d)
        probs = flash.gating(flash.pooling_before_gating(x))
        f64 = flash.mlp2(model.model.pixel_shuffle(grid, 0.25).reshape(t, -1, 16 * d))
        f256 = model.model.multi_modal_projector(model.model.pixel_shuffle(grid, 0.5).reshape(t, -1, 4 * d))
    p = probs[:, 0]
    relative = 0.3
    thr = float(torch.quantile(p, relative))
    above = sorted(v for v in p.tolist() if v > thr)
    absolute = (above[0] + above[1]) / 2  # some candidates compressed, some kept by the absolute floor
    pairs = [(relative, absolute), (0.0, 0.0), (0.5, 0.0), (0.9, 0.0), (0.5, 1.0)]
    decisions = []
    for rel, ab in pairs:
        dec, q = decide(p, rel, ab)
        # A probability equal to the quantile is the order statistic itself (exact in any
        # implementation); every other one must sit clearly off both thresholds.
        margin = min(abs(v - t) for v in p.tolist() for t in (q, ab) if v != t)
        assert margin > 1e-4, f"fragile decision for {(rel, ab)}: margin {margin}"
        decisions.append({"relative": rel, "absolute": ab, "quantile": q, "compress": dec})
    compress = decisions[0]["compress"]
    assert any(compress) and not all(compress), compress
    out = fresh("flash-custom")
    sd = to_custom(hf_state_dict(model), 2)
    sd.update({k: v.detach().clone().contiguous() for k, v in flash.state_dict().items()})
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    vision = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
                  image_size=TILE, patch_size=14, qkv_bias=True, qk_normalization=False,
                  norm_type="layer_norm", layer_norm_eps=1e-6, hidden_act="gelu")
    cfg = custom_config(vision, {"flash_mode": True, "flash_relative_threshold": relative,
                                 "flash_absolute_threshold": absolute})
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    chosen = torch.cat([f64[i] if c else f256[i] for i, c in enumerate(compress)])
    tokens = [f64.shape[1] if c else f256.shape[1] for c in compress]
    write_reference(out, chosen, tokens, router_probs=probs.float(),
                    features_vir_off=f256.reshape(-1, LLM_HIDDEN))
    (out / "decisions.json").write_text(json.dumps(
        {"probs_compress": p.tolist(), "decisions": decisions}, indent=1))
    print("flash-custom", "probs", [round(v, 4) for v in p.tolist()], "compress", compress)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    image = test_image()
    image.save(OUT / "image.png")
    pv = pixel_values_of(image, MAX_TILES)
    assert pv.shape[0] == 7, pv.shape
    save_file({"pixel_values": pv}, str(OUT / "pixel_values.safetensors"))
    per_tile = (TILE // 14) ** 2 // 4

    # 300M style, HF layout, f32, one file.
    model = build("300m", TILE, 2, seed=11)
    out = fresh("vit300m-hf")
    model.save_pretrained(out, save_original_format=False)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor", "crop_to_patches": True, "min_patches": 1,
        "max_patches": MAX_TILES, "size": {"height": TILE, "width": TILE}, "resample": 3,
        "image_mean": MEAN.tolist(), "image_std": STD.tolist()}, indent=1))
    write_reference(out, features(model, pv), [per_tile] * 7)

    # 300M style, legacy HF names, f16 on disk, final LayerNorm (use_mean_pooling false).
    model = build("300m", TILE, 2, seed=21, use_mean_pooling=False)
    round_to(model, torch.float16)
    out = fresh("vit300m-hf-legacy-f16")
    model.config.save_pretrained(out)
    sd = {k: v.to(torch.float16) for k, v in to_legacy_hf(hf_state_dict(model)).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_reference(out, features(model, pixel_values_of(image, 12)), [per_tile] * 7)

    # 6B style, GitHub layout, bf16 in 3 shards, pos-embed 2x2 -> 4x4, select_layer -2.
    model = build("6b", 28, 3, seed=31, feature_layer=-2)
    round_to(model, torch.bfloat16)
    out = fresh("vit6b-custom-bf16")
    save_sharded(to_custom(hf_state_dict(model), 3), out, 3, torch.bfloat16)
    vision = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=3,
                  image_size=28, patch_size=14)  # norm, qk-norm, qkv bias: InternVisionConfig (6B) defaults
    (out / "config.json").write_text(json.dumps(custom_config(vision, {"select_layer": -2}), indent=1))
    write_reference(out, features(model, pv), [per_tile] * 7)

    flash_fixture(pv)
    sizes = {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*")) if p.is_file()}
    print(json.dumps(sizes, indent=1))
    print("total bytes", sum(sizes.values()))


if __name__ == "__main__":
    main()
