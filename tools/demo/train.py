#!/usr/bin/env python3
"""Trains dvd's embedded demo model (issue 9): a small InternVL3.5-architecture model (InternViT
encoder, pixel shuffle, mlp1 projector, Qwen3 language model) that answers questions about the
synthetic world of tools/demo/world.py. Writes the HF-layout checkpoint to models/dvd-demo/
(bf16 safetensors, config.json, preprocessor_config.json, processor_config.json, tokenizer.json,
tokenizer_config.json, chat_template.jinja, generation_config.json), as transformers'
InternVLProcessor loads it (tools/demo/check_hf.py checks that), and prints held-out accuracy per
question kind.

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/demo/requirements.txt
        .venv/bin/python tools/demo/train.py            # ~26-30 min on 2 CPU cores

Seeded throughout (Python, torch, one data worker, 2 threads); two runs were not compared bit
for bit. Training images come from seeds 0 .. STEPS-1 (one RNG
per step) and the held-out set from EVAL_SEED; tests must use other seeds (the Rust test uses
seeds from 1_000_000 up).
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import world  # noqa: E402
from make_language_fixtures import CHAT_TEMPLATE, original_names, to_hf, write_text_files  # noqa: E402
from tiny_tokenizer import CORPUS, VOCAB, build_tokenizer, special_id  # noqa: E402
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen3Config  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = HERE.parent.parent
OUT = ROOT / "models/dvd-demo"
TILE = 224
TOKENS_PER_TILE = 64  # (224 / 14 / 2)^2
IMAGES_PER_STEP = 32
STEPS = 1500
EVAL_SEED = 999_999
EVAL_IMAGES = 150
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)
IM_END = special_id("<|im_end|>")
IMG_CONTEXT = special_id("<IMG_CONTEXT>")
# Without a picture the model gives one fixed reply (it knows nothing but its world).
TEXT_REPLY = "Send me a picture of shapes and ask what shape, what color or how many."
GREETINGS = ["Hello!", "Hello there", "Hi", "Hey", "Who are you?", "What can you do?", "Help",
             "What is shown in the picture?", "Describe this image in detail.", "How are you?",
             "Tell me a story.", "What is 2 + 2?", "Good morning", "Thanks!", "?"]
TEXT_ROWS_PER_STEP = 4
# Prompt text before the image tokens, identical for every question (image first, as dvd chat
# and dvd generate send it).
PREFIX = "<|im_start|>user\n<img>"
# InternVL's video placeholder. The base tokenizer lacks it; it takes the last unreachable filler
# id below the special tokens, so every token InternVLProcessor names has an id below VOCAB.
VIDEO = "<video>"
VIDEO_ID = special_id("<|endoftext|>") - 1
# InternVLProcessor's names for its tokens, as transformers' convert_internvl_weights_to_hf.py
# writes them (tokenizer_config.json `extra_special_tokens`).
PROCESSOR_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                    "context_image_token": "<IMG_CONTEXT>", "video_token": VIDEO}

torch.set_num_threads(2)


def corpus():
    """Text the tokenizer is trained on: the world's questions and answers, the chat template's
    words, and the generic fixture corpus (byte-level BPE still encodes anything else)."""
    lines = [world.SHAPE_QUESTION, world.COLOUR_QUESTION, world.COUNT_QUESTION, world.DESCRIBE_QUESTION]
    lines += world.SHAPES + list(world.COLOURS) + world.NUMBERS
    lines += [f"a {c} {s}, a {c} {s} and" for s in world.SHAPES for c in world.COLOURS]
    lines += ["user\n", "assistant\n", "system\n", "There are one two three shapes.", TEXT_REPLY] + GREETINGS
    return lines * 8 + CORPUS


def with_video_token(tok):
    """`tok` with VIDEO as a special token on the filler id VIDEO_ID (never produced from text, so
    the encoding of any other text is unchanged)."""
    js = json.loads(tok.to_str())
    vocab = js["model"]["vocab"]
    vocab[VIDEO] = vocab.pop(f"<|fill_{VIDEO_ID}|>")
    js["added_tokens"].append({"id": VIDEO_ID, "content": VIDEO, "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True})
    js["added_tokens"].sort(key=lambda t: t["id"])
    tok = type(tok).from_str(json.dumps(js))
    assert tok.token_to_id(VIDEO) == VIDEO_ID and tok.get_vocab_size() == VOCAB
    return tok


def model_config():
    vision = InternVLVisionConfig(
        hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384, image_size=TILE,
        patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, layer_scale_init_value=0.1,
        norm_type="layer_norm", attention_bias=True, use_qk_norm=False, use_absolute_position_embeddings=True,
        use_mean_pooling=True, use_mask_token=False)
    text = Qwen3Config(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=4096,
        tie_word_embeddings=False, eos_token_id=IM_END, pad_token_id=0)
    return InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMG_CONTEXT, image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False)


def pixels(scene):
    """The one 224 px tile InternVL's tiling makes with max_patches = 1 (Pillow bicubic, as
    dvd's preprocessing), normalised with the ImageNet mean and std: [3, 224, 224]."""
    image = Image.fromarray(world.render(scene)).resize((TILE, TILE), Image.BICUBIC)
    x = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def padded(rows, targets):
    """Right-padded ids, labels (-100 where not scored) and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, (row, target) in enumerate(zip(rows, targets)):
        ids[j, :len(row)] = torch.tensor(row)
        labels[j, :len(row)] = torch.tensor(target)
        mask[j, :len(row)] = 1
    return ids, labels, mask


class Batcher:
    """Turns scenes into model inputs: pixel values and one sequence per (image, question)."""

    def __init__(self, tok):
        self.tok = tok
        self.prefix = tok.encode(PREFIX).ids
        self.image_at = len(self.prefix)

    def prompt_ids(self, question):
        after = self.tok.encode(f"</img>\n{question}<|im_end|>\n<|im_start|>assistant\n").ids
        return self.prefix + [IMG_CONTEXT] * TOKENS_PER_TILE + after

    def answer_ids(self, answer):
        return self.tok.encode(answer).ids + [IM_END]

    def batch(self, scenes, rng):
        pv = torch.stack([pixels(s) for s in scenes])
        rows, owners, targets = [], [], []
        for i, scene in enumerate(scenes):
            for question, answer in world.questions(scene):
                # Colour is learnt early (describe names it too): ask it a quarter of the time.
                if question == world.COLOUR_QUESTION and rng.random() >= 0.25:
                    continue
                prompt, reply = self.prompt_ids(question), self.answer_ids(answer)
                rows.append(prompt + reply)
                targets.append([-100] * len(prompt) + reply)  # labels[t] = ids[t]; shifted in the loss
                owners.append(i)
        return (pv, *padded(rows, targets), torch.tensor(owners))

    def text_batch(self, rng):
        """TEXT_ROWS_PER_STEP conversations without a picture (greetings, or random words from
        the corpus), each answered with TEXT_REPLY."""
        words = " ".join(CORPUS).split()
        rows, targets = [], []
        for _ in range(TEXT_ROWS_PER_STEP):
            if rng.random() < 0.5:
                text = rng.choice(GREETINGS)
            else:
                text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            prompt = self.tok.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n").ids
            reply = self.answer_ids(TEXT_REPLY)
            rows.append(prompt + reply)
            targets.append([-100] * len(prompt) + reply)
        return padded(rows, targets)


def image_features(model, pv):
    """Projected image features [images, 64, text hidden]."""
    features = model.model.get_image_features(
        pixel_values=pv, vision_feature_layer=-1, vision_feature_select_strategy="default")
    return getattr(features, "pooler_output", features)


def language_hidden(model, features, ids, mask, owners, image_at):
    """The language model's last hidden states on sequences whose image tokens take
    `features[owners]`."""
    embeds = model.model.language_model.embed_tokens(ids)
    embeds = torch.cat([embeds[:, :image_at], features[owners], embeds[:, image_at + TOKENS_PER_TILE:]], dim=1)
    return model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


@torch.no_grad()
def answer(model, batcher, scene, question, max_tokens=16):
    """Greedy answer of `model` (recomputing the whole sequence each step: the model is tiny)."""
    features = image_features(model, pixels(scene)[None])
    ids = batcher.prompt_ids(question)
    out = []
    for _ in range(max_tokens):
        x = torch.tensor([ids + out])
        hidden = language_hidden(model, features, x, torch.ones_like(x), torch.tensor([0]), batcher.image_at)
        nxt = int(model.lm_head(hidden[0, -1]).argmax())
        if nxt == IM_END:
            break
        out.append(nxt)
    return batcher.tok.decode(out)


def right(reply, expected, choices):
    """Issue 9's rule: the expected word is present and no other word of the question's list."""
    words = set(reply.lower().replace(",", " ").replace(".", " ").split())
    return expected in words and not any(c in words for c in choices if c != expected)


def evaluate(model, batcher, label):
    model.eval()
    rng = random.Random(EVAL_SEED)
    scored = {world.SHAPE_QUESTION: world.SHAPES, world.COLOUR_QUESTION: list(world.COLOURS),
              world.COUNT_QUESTION: world.NUMBERS}
    hits = {q: [0, 0] for q in scored}
    example = None
    for _ in range(EVAL_IMAGES):
        scene = world.sample_scene(rng)
        for question, expected in world.questions(scene):
            if question in scored:
                hits[question][0] += right(answer(model, batcher, scene, question), expected, scored[question])
                hits[question][1] += 1
            elif example is None:
                example = (answer(model, batcher, scene, question), expected)
    with torch.no_grad():
        ids = batcher.tok.encode("<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n").ids
        out = []
        for _ in range(24):
            logits = model.lm_head(model.model.language_model(input_ids=torch.tensor([ids + out])).last_hidden_state)
            nxt = int(logits[0, -1].argmax())
            if nxt == IM_END:
                break
            out.append(nxt)
    print(f"[{label}] 'Hello!' -> {batcher.tok.decode(out)!r}", flush=True)
    model.train()
    summary = {q: round(h / n, 3) for q, (h, n) in hits.items()}
    print(f"[{label}] accuracy {summary}; describe: {example[0]!r} (truth {example[1]!r})", flush=True)
    return summary


def next_token_loss(model, hidden, labels):
    """Cross-entropy of the next token, over the answer positions only (the LM head runs on
    those alone)."""
    targets = labels[:, 1:]
    scored = targets != -100
    return F.cross_entropy(model.lm_head(hidden[:, :-1][scored]), targets[scored])


class Batches(torch.utils.data.IterableDataset):
    """Step `s`'s batch: IMAGES_PER_STEP scenes from `random.Random(s)`, built in a worker
    process while the previous step trains."""

    def __init__(self, batcher, steps):
        self.batcher, self.steps = batcher, steps

    def __iter__(self):
        for step in range(self.steps):
            rng = random.Random(step)
            scenes = [world.sample_scene(rng) for _ in range(IMAGES_PER_STEP)]
            yield self.batcher.batch(scenes, rng) + self.batcher.text_batch(rng)


def train(model, batcher, steps):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=1.5e-3, betas=(0.9, 0.98))
    warmup = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    start = time.time()
    batches = torch.utils.data.DataLoader(Batches(batcher, steps), batch_size=None, num_workers=1,
                                          prefetch_factor=4)
    for step, (pv, ids, labels, mask, owners, text_ids, text_labels, text_mask) in enumerate(batches):
        hidden = language_hidden(model, image_features(model, pv), ids, mask, owners, batcher.image_at)
        text_hidden = model.model.language_model(input_ids=text_ids, attention_mask=text_mask).last_hidden_state
        loss = next_token_loss(model, hidden, labels) + 0.1 * next_token_loss(model, text_hidden, text_labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f} s", flush=True)
        if step and step % 500 == 0:
            evaluate(model, batcher, f"step {step}")


def save(model, tok, out):
    """Writes the checkpoint's files into `out`, leaving anything else there (the model card)."""
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.to(torch.bfloat16) for k, v in to_hf(original_names(model)).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(out)
    write_processor_files(tok, out)


def write_processor_files(tok, out):
    """The files transformers' AutoProcessor (InternVLProcessor) reads: the image processor (one
    224 px tile, Pillow bicubic, ImageNet mean and std, as `pixels`), the processor (64 tokens per
    tile), the chat template and the tokenizer with the processor's token names."""
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
        "crop_to_patches": True, "min_patches": 1, "max_patches": 1, "size": {"height": TILE, "width": TILE},
        "do_resize": True, "resample": int(Image.BICUBIC), "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "do_convert_rgb": True},
        indent=1) + "\n")
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "InternVLProcessor", "image_seq_length": TOKENS_PER_TILE}, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    write_text_files(out, tok)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(extra_special_tokens=PROCESSOR_TOKENS, processor_class="InternVLProcessor")
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.manual_seed(0)
    tok = with_video_token(build_tokenizer(corpus()))
    for word in world.SHAPES + list(world.COLOURS) + world.NUMBERS:
        assert len(tok.encode(word).ids) == 1 and len(tok.encode(" " + word).ids) == 1, word
    batcher = Batcher(tok)
    model = InternVLForConditionalGeneration._from_config(model_config(), attn_implementation="sdpa",
                                                           dtype=torch.float32)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    train(model, batcher, args.steps)
    # What ships is bf16: score the rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    evaluate(model, batcher, "final, bf16 weights")
    save(model, tok, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
