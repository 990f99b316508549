#!/usr/bin/env python3
"""Writes the language half of an HF-layout InternVL checkpoint as a plain Qwen3 causal LM
(`Qwen3ForCausalLM`, or `Qwen3MoeForCausalLM`), with the Python standard library only: the same
tensors byte for byte (`model.language_model.*` renamed `model.*`, `lm_head.weight` as it is; the
vision tower and projector left out), `text_config` as config.json, and the tokenizer, chat
template and generation config.

Why: `transformers serve --continuous-batching` batches only models it sees as text LLMs
(cli/serving/utils.py `use_continuous_batching`: `modality == Modality.LLM`, decided by the
model's class, not by the request). An InternVL checkpoint is a VLM, so every request to it, text
only or not, runs sequentially. A transformers user who wants batched text chat serves the
language model alone; this is that model, computing exactly what InternVL's text-only path does.

Usage: python3 tools/peer/language_only.py --model /tmp/dvd-bench-ivl --out /tmp/dvd-bench-ivl-lm
"""

import argparse
import json
import shutil
import struct
from pathlib import Path

COPIED = ("tokenizer.json", "chat_template.jinja", "generation_config.json")
ARCH = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="HF-layout InternVL checkpoint directory")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    config = json.loads((args.model / "config.json").read_text())
    text = dict(config["text_config"])
    text["architectures"] = [ARCH[text["model_type"]]]
    text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", False))
    src = args.model / "model.safetensors"
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
    names = {}
    for name in header:
        if name.startswith("model.language_model."):
            names[name] = "model." + name[len("model.language_model."):]
        elif name == "lm_head.weight":
            names[name] = name
    if not names:
        raise SystemExit(f"{src}: no model.language_model.* tensors")
    out_header, offset = {"__metadata__": {"format": "pt"}}, 0
    for old, new in names.items():
        start, end = header[old]["data_offsets"]
        out_header[new] = {"dtype": header[old]["dtype"], "shape": header[old]["shape"],
                           "data_offsets": [offset, offset + end - start]}
        offset += end - start
    blob = json.dumps(out_header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f, open(args.out / "model.safetensors", "wb") as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        for old in names:
            start, end = header[old]["data_offsets"]
            f.seek(base + start)
            left = end - start
            while left:
                chunk = f.read(min(left, 1 << 24))
                out.write(chunk)
                left -= len(chunk)
    (args.out / "config.json").write_text(json.dumps(text, indent=2) + "\n")
    for name in COPIED:
        if (args.model / name).exists():
            shutil.copy(args.model / name, args.out / name)
    # A plain tokenizer: without the processor's names, AutoProcessor gives the tokenizer itself.
    tc = json.loads((args.model / "tokenizer_config.json").read_text())
    for key in ("processor_class", "extra_special_tokens"):
        tc.pop(key, None)
    (args.out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {len(names)} tensors ({offset / 1e6:.0f} MB), {text['architectures'][0]}")


if __name__ == "__main__":
    main()
