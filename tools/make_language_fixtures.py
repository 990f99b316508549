#!/usr/bin/env python3
"""Reference fixtures for dvd's language model (language-server/src/model).

Builds small random checkpoints with transformers, re-randomises every parameter, writes them in
the published layouts with a tiny tokenizer (tools/tiny_tokenizer.py), and records transformers'
outputs for a text-only prompt and (InternVL checkpoints) a prompt with one image of 7 tiles:
prompt ids, last-position logits after prefill, and 16 greedy tokens. Model seeds are searched
until every greedy step's top-1/top-2 logit margin is at least MIN_MARGIN, so a correct
re-implementation cannot flip a token on rounding noise.

Writes into language-server/tests/fixtures/model/:
  internvl-dense-hf/          InternVL (tiny ViT + Qwen3 dense, head_dim != hidden/heads),
                              HF layout (model.language_model.*, lm_head.weight), f32, one file,
                              preprocessor_config.json (max 6 tiles), chat_template.jinja
  internvl-moe-custom-bf16/   InternVL (tiny ViT + Qwen3-MoE: 4 experts, top-2, norm_topk_prob,
                              mlp_only_layers [1]), GitHub layout (language_model.model.*,
                              language_model.lm_head.weight, vision_model.*, mlp1.*), bf16 in
                              2 shards + index, llm_config
  qwen3-tied-f16/             plain Qwen3ForCausalLM, tied embeddings (no lm_head tensor), f16
  qwen3-moe-fused-f32/        plain Qwen3MoeForCausalLM (2 layers, both MoE: 8 experts, top-2,
                              norm_topk_prob false), f32, written by model.save_pretrained with
                              save_original_format=False: the fused expert tensors
                              mlp.experts.gate_up_proj [E, 2I, H] / mlp.experts.down_proj [E, H, I]
                              and the config as transformers 5 writes it (num_local_experts)
  qwen3-odd-vocab-f32/        plain Qwen3ForCausalLM, vocab_size 509 (odd: tensor-parallel vocab
                              padding to a multiple of 2 and 4; the tokenizer's 512 ids exceed it,
                              every prompt, eos and greedy id is below 509), 4 query / 2 KV heads,
                              untied lm_head, f32
  qwen3-moe-kv1-f32/          plain Qwen3MoeForCausalLM, 4 query heads and one KV head (replicated
                              across tensor-parallel ranks), 3 layers with mlp_only_layers [1],
                              6 experts (uneven over 4 ranks), top-2, norm_topk_prob, f32, fused
                              expert tensors like qwen3-moe-fused-f32
  */reference.safetensors     text_ids, text_logits, text_greedy[, image_ids, image_logits,
                              image_greedy] (ids i64, logits f32); internvl-dense-hf also
                              chat_ids (apply_chat_template with its template, image expanded)
                              and chat_logits
Every checkpoint directory also gets tokenizer.json, tokenizer_config.json and
generation_config.json (eos = <|im_end|>). The references come from the model as built
(transformers' default experts implementation, grouped_mm, for the MoE checkpoints).

Usage:  .venv/bin/pip install -r tools/requirements-vision.txt
        .venv/bin/python tools/make_language_fixtures.py [--only NAME ...]
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_vision_fixtures import rerandomise, round_to, save_sharded, to_custom  # noqa: E402
from tiny_tokenizer import VOCAB, build_tokenizer, special_id  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "language-server/tests/fixtures/model"
PIXELS = ROOT / "vision-server/tests/fixtures/model/pixel_values.safetensors"
TILE = 56
TOKENS_PER_TILE = 4  # (56 / 14 / 2)^2
STEPS = 16
MIN_MARGIN = 0.03
SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
IM_END = special_id("<|im_end|>")
IMG_CONTEXT = special_id("<IMG_CONTEXT>")
ODD_VOCAB = 509  # qwen3-odd-vocab-f32: odd, and above <|endoftext|>, <|im_start|> and <|im_end|>

# transformers' InternVL HF chat template (as its conversion script writes it, image placeholder
# <IMG_CONTEXT> followed by a newline).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

torch.set_num_threads(2)


def text_config(moe):
    common = dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=IM_END, pad_token_id=0,
    )
    if moe:
        return Qwen3MoeConfig(**common, intermediate_size=96, moe_intermediate_size=48, num_experts=4,
                              num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                              mlp_only_layers=[1])
    return Qwen3Config(**common, intermediate_size=128)


def internvl(moe, seed):
    vision = InternVLVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=TILE,
        patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, layer_scale_init_value=0.1, norm_type="layer_norm",
        attention_bias=True, use_qk_norm=False, use_mean_pooling=True)
    config = InternVLConfig(
        vision_config=vision, text_config=text_config(moe), image_token_id=IMG_CONTEXT,
        image_seq_length=TOKENS_PER_TILE, downsample_ratio=0.5, projector_hidden_act="gelu",
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)
    model = InternVLForConditionalGeneration._from_config(config, attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    rerandomise(model, seed)
    return model


def qwen3_tied(seed):
    cfg = text_config(False)
    cfg.tie_word_embeddings = True
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    rerandomise(model, seed)
    model.tie_weights()
    return model


def qwen3_odd_vocab(seed):
    """Plain Qwen3 dense with an odd vocabulary of 509 (below the tokenizer's specials' end)."""
    cfg = text_config(False)
    cfg.vocab_size = ODD_VOCAB
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    rerandomise(model, seed)
    return model


def rerandomise_moe(cfg, seed):
    """A Qwen3-MoE model of `cfg`, every parameter random, the fused expert tensors at fan_in K."""
    model = Qwen3MoeForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    rerandomise(model, seed)
    # rerandomise's fan_in is p[0].numel(), i.e. N * K for the stacked [experts, N, K] expert
    # tensors; draw those with fan_in K so the experts weigh in the logits like a dense MLP.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp.experts." in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def qwen3_moe_fused(seed):
    """Qwen3-MoE, 2 layers, both sparse: 8 experts, top-2, no renormalisation of the top-k weights."""
    cfg = text_config(True)
    cfg.num_hidden_layers, cfg.layer_types, cfg.mlp_only_layers = 2, ["full_attention"] * 2, []
    cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob = 8, 2, False
    return rerandomise_moe(cfg, seed)


def qwen3_moe_kv1(seed):
    """Qwen3-MoE, 3 layers (layer 1 dense), one KV head, 6 experts, top-2, renormalised top-k weights."""
    cfg = text_config(True)
    cfg.num_key_value_heads, cfg.num_experts = 1, 6
    assert cfg.mlp_only_layers == [1] and cfg.num_experts_per_tok == 2 and cfg.norm_topk_prob
    return rerandomise_moe(cfg, seed)


def prompt_ids(tok, question, image_tiles=0):
    if image_tiles:
        question = "<image>\n" + question
    text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")
    text = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * (TOKENS_PER_TILE * image_tiles) + "</img>")
    return text, tok.encode(text).ids


def run(model, ids, pixel_values=None):
    """Last-position logits, STEPS greedy tokens and the smallest top-1/top-2 margin."""
    input_ids = torch.tensor([ids])
    extra = {} if pixel_values is None else {"pixel_values": pixel_values}
    with torch.no_grad():
        logits = model(input_ids=input_ids, **extra).logits[0, -1].clone()
        gen = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=STEPS,
                             do_sample=False, eos_token_id=None, pad_token_id=0, **extra)
        new = gen[0, len(ids):]
        full = model(input_ids=gen[:, :-1], **extra).logits[0, len(ids) - 1:]
    top2 = torch.topk(full, 2, dim=-1).values
    return logits, new, float((top2[:, 0] - top2[:, 1]).min())


def references(model, tok, pixel_values=None):
    out, margins = {}, []
    text, ids = prompt_ids(tok, "Describe this image in detail.")
    logits, greedy, m = run(model, ids)
    out.update(text_ids=torch.tensor(ids), text_logits=logits, text_greedy=greedy)
    margins.append(m)
    if pixel_values is not None:
        _, ids = prompt_ids(tok, "What is shown in the picture?", image_tiles=pixel_values.shape[0])
        logits, greedy, m = run(model, ids, pixel_values)
        out.update(image_ids=torch.tensor(ids), image_logits=logits, image_greedy=greedy)
        margins.append(m)
    return {k: v.contiguous() for k, v in out.items()}, min(margins)


def with_margin(build, tok, pixel_values=None):
    for seed in range(100, 200):
        model = build(seed)
        refs, margin = references(model, tok, pixel_values)
        if margin >= MIN_MARGIN:
            return model, refs, seed, margin
    raise SystemExit("no seed with a comfortable greedy margin")


def original_names(model):
    """State dict with per-expert MoE tensors (save_original_format=True) and llava names."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, save_original_format=True)
        return load_file(str(Path(d) / "model.safetensors"))


def to_hf(sd):
    renames = [("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
               ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")]
    out = {}
    for k, v in sd.items():
        for a, b in renames:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v.contiguous()
    return out


def write_text_files(out, tok):
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(out)
    GenerationConfig(eos_token_id=[IM_END], pad_token_id=0).save_pretrained(out)


def fresh(name):
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def write_internvl_dense_hf(tok, pixel_values):
    """InternVL + Qwen3 dense, HF layout, f32."""
    model, refs, seed, margin = with_margin(lambda s: internvl(False, s), tok, pixel_values)
    out = fresh("internvl-dense-hf")
    sd = to_hf(original_names(model))
    assert "model.language_model.embed_tokens.weight" in sd and "lm_head.weight" in sd, sorted(sd)[:5]
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor", "crop_to_patches": True, "min_patches": 1,
        "max_patches": 6, "size": {"height": TILE, "width": TILE}}, indent=1))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    write_text_files(out, tok)
    # The prompt transformers builds from the shipped chat template (InternVLProcessor expands
    # each <IMG_CONTEXT> placeholder to <img> + <IMG_CONTEXT> x tokens + </img>).
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in the picture?"}]}]
    chat = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    n = TOKENS_PER_TILE * pixel_values.shape[0]
    chat = chat.replace("<IMG_CONTEXT>", "<img>" + "<IMG_CONTEXT>" * n + "</img>", 1)
    refs["chat_ids"] = torch.tensor(tok.encode(chat).ids)
    with torch.no_grad():
        refs["chat_logits"] = model(input_ids=refs["chat_ids"][None], pixel_values=pixel_values).logits[0, -1].clone()
    save_file(refs, str(out / "reference.safetensors"))
    return seed, margin


def write_internvl_moe_custom_bf16(tok, pixel_values):
    """InternVL + Qwen3-MoE, GitHub layout, bf16 shards."""
    def build_moe(s):
        m = internvl(True, s)
        round_to(m, torch.bfloat16)
        return m
    model, refs, seed, margin = with_margin(build_moe, tok, pixel_values)
    out = fresh("internvl-moe-custom-bf16")
    sd = to_custom(to_hf(original_names(model)), 2)
    assert "language_model.model.layers.0.mlp.experts.3.down_proj.weight" in sd, sorted(sd)[:5]
    save_sharded(sd, out, 2, torch.bfloat16)
    t = model.config.text_config
    llm = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": VOCAB,
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "moe_intermediate_size": t.moe_intermediate_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim, "num_experts": t.num_experts, "num_experts_per_tok": t.num_experts_per_tok,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [1], "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "tie_word_embeddings": False, "eos_token_id": IM_END,
    }
    vision = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2, image_size=TILE,
                  patch_size=14, qkv_bias=True, qk_normalization=False, norm_type="layer_norm",
                  architectures=["InternVisionModel"], model_type="intern_vit_6b")
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "vision_config": vision,
        "llm_config": llm, "select_layer": -1, "force_image_size": TILE, "downsample_ratio": 0.5,
        "template": "internvl2_5", "dynamic_image_size": True, "use_thumbnail": True, "ps_version": "v2",
        "min_dynamic_patch": 1, "max_dynamic_patch": 6,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_text_files(out, tok)
    save_file(refs, str(out / "reference.safetensors"))
    return seed, margin


def write_qwen3_tied_f16(tok, pixel_values):
    """Plain Qwen3, tied embeddings, f16."""
    def build_tied(s):
        m = qwen3_tied(s)
        round_to(m, torch.float16)
        return m
    model, refs, seed, margin = with_margin(build_tied, tok)
    out = fresh("qwen3-tied-f16")
    model.config.save_pretrained(out)
    sd = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_text_files(out, tok)
    save_file(refs, str(out / "reference.safetensors"))
    return seed, margin


def write_qwen3_odd_vocab_f32(tok, pixel_values):
    """Plain Qwen3 dense, vocab 509, untied, f32."""
    model, refs, seed, margin = with_margin(qwen3_odd_vocab, tok)
    ids = torch.cat([refs["text_ids"], refs["text_greedy"]])
    assert int(ids.max()) < ODD_VOCAB and IM_END < ODD_VOCAB, ids.max()
    out = fresh("qwen3-odd-vocab-f32")
    model.config.save_pretrained(out)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert sd["lm_head.weight"].shape == sd["model.embed_tokens.weight"].shape == (ODD_VOCAB, 64)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_text_files(out, tok)
    save_file(refs, str(out / "reference.safetensors"))
    return seed, margin


def write_fused_moe(name, build, tok):
    """A plain Qwen3-MoE as transformers 5 keeps it in memory (fused experts), f32."""
    model, refs, seed, margin = with_margin(build, tok)
    out = fresh(name)
    # save_original_format=True (the default) would revert to per-expert tensors.
    model.save_pretrained(out, save_original_format=False)
    names = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and "model.layers.0.mlp.experts.0.up_proj.weight" \
        not in names, sorted(names)
    assert "num_local_experts" in json.loads((out / "config.json").read_text())
    write_text_files(out, tok)
    save_file(refs, str(out / "reference.safetensors"))
    return seed, margin


def write_qwen3_moe_fused_f32(tok, pixel_values):
    """Plain Qwen3-MoE, both layers sparse, 8 experts, f32."""
    return write_fused_moe("qwen3-moe-fused-f32", qwen3_moe_fused, tok)


def write_qwen3_moe_kv1_f32(tok, pixel_values):
    """Plain Qwen3-MoE, one KV head, 6 experts, layer 1 dense, f32."""
    return write_fused_moe("qwen3-moe-kv1-f32", qwen3_moe_kv1, tok)


FIXTURES = {
    "internvl-dense-hf": write_internvl_dense_hf,
    "internvl-moe-custom-bf16": write_internvl_moe_custom_bf16,
    "qwen3-tied-f16": write_qwen3_tied_f16,
    "qwen3-moe-fused-f32": write_qwen3_moe_fused_f32,
    "qwen3-odd-vocab-f32": write_qwen3_odd_vocab_f32,
    "qwen3-moe-kv1-f32": write_qwen3_moe_kv1_f32,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=sorted(FIXTURES), help="write only these fixtures (default: all)")
    args = ap.parse_args()
    tok = build_tokenizer()
    pixel_values = load_file(str(PIXELS))["pixel_values"]
    report = {name: FIXTURES[name](tok, pixel_values) for name in FIXTURES if not args.only or name in args.only}
    sizes = {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*")) if p.is_file()}
    print(json.dumps({"seed_and_min_margin": report, "bytes": sum(sizes.values())}, indent=1))


if __name__ == "__main__":
    main()
