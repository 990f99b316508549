#!/usr/bin/env python3
"""Checks that the demo model (models/dvd-demo) is a faithful HF InternVL checkpoint: transformers'
AutoProcessor (InternVLProcessor) and InternVLForConditionalGeneration load it as they load
OpenGVLab's *-HF checkpoints, and their greedy answer to a question about an example picture, and
the length of its prompt, equal `dvd generate`'s. Exits 1 on a mismatch.

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/demo/requirements.txt
        CARGO_PROFILE_DEV_DEBUG=false cargo build -p dvd
        .venv/bin/python tools/demo/check_hf.py [--dvd target/debug/dvd] [--model models/dvd-demo]

Both sides compute in f32 from the bf16 weights (dvd's CPU default; `--wire-features` rounds the
image features to bf16 as a vision server sends them). transformers resizes with torchvision's
antialiased bicubic, dvd (and training) with Pillow's, so the pixels may differ by one level.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = ROOT / "examples/red-circle.png"
QUESTION = "What shape is in the image?"
MAX_NEW_TOKENS = 8


def transformers_side(model_dir):
    """(prompt length, answer, logits after the prompt) from transformers, after checking what its
    processor read."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, InternVLForConditionalGeneration, InternVLProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = InternVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    config, tokenizer = model.config, processor.tokenizer
    assert isinstance(processor, InternVLProcessor), type(processor)
    assert processor.image_seq_length == config.image_seq_length, (processor.image_seq_length, config.image_seq_length)
    assert processor.image_token_id == config.image_token_id, (processor.image_token_id, config.image_token_id)
    ids = {name: tokenizer.convert_tokens_to_ids(getattr(tokenizer, name))
           for name in ("start_image_token", "end_image_token", "context_image_token", "video_token")}
    assert all(0 <= i < config.text_config.vocab_size for i in ids.values()), ids
    assert len(tokenizer) <= config.text_config.vocab_size, (len(tokenizer), config.text_config.vocab_size)
    print(f"processor: {type(processor).__name__}, image_seq_length {processor.image_seq_length}, tokens {ids}, "
          f"{type(processor.image_processor).__name__} {processor.image_processor.size.height} px "
          f"max_patches {processor.image_processor.max_patches}, len(tokenizer) {len(tokenizer)}")

    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(IMAGE).convert("RGB")},
                                             {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    prompt = inputs["input_ids"][0].tolist()
    assert prompt.count(config.image_token_id) == config.image_seq_length * inputs["pixel_values"].shape[0], prompt
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    answer = tokenizer.decode(out.sequences[0, len(prompt):], skip_special_tokens=True)
    return len(prompt), answer, out.logits[0][0].float()


def dvd_side(dvd, model_dir):
    """(prompt length, answer, logits after the prompt) from `dvd generate --json --wire-features`."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        logits = Path(tmp) / "logits.safetensors"
        cmd = [str(dvd), "generate", "--model", str(model_dir), "--image", str(IMAGE), "--prompt", QUESTION,
               "--max-new-tokens", str(MAX_NEW_TOKENS), "--json", "--wire-features", "--logits-out", str(logits)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        return report["prompt_tokens"], report["text"], load_file(logits)["logits"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvd", type=Path, default=ROOT / "target/debug/dvd", help="the dvd binary")
    parser.add_argument("--model", type=Path, default=ROOT / "models/dvd-demo", help="the checkpoint")
    args = parser.parse_args()
    try:
        import torchvision  # noqa: F401  transformers' InternVLProcessor needs it (its video processor)
    except ImportError:
        sys.exit("transformers' InternVLProcessor needs torchvision: pip install -r tools/demo/requirements.txt")

    hf_len, hf_text, hf_logits = transformers_side(args.model)
    dvd_len, dvd_text, dvd_logits = dvd_side(args.dvd, args.model)
    print(f"transformers: {hf_len} prompt tokens, answer {hf_text!r}")
    print(f"dvd:          {dvd_len} prompt tokens, answer {dvd_text!r}")
    print(f"first-token logits: max |difference| {(hf_logits - dvd_logits).abs().max().item():.4f} "
          f"(of a range of {hf_logits.min().item():.1f} .. {hf_logits.max().item():.1f})")
    if (hf_len, hf_text) != (dvd_len, dvd_text):
        sys.exit("MISMATCH between transformers and dvd")
    print("ok: transformers and dvd agree")


if __name__ == "__main__":
    main()
