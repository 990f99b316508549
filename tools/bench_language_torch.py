#!/usr/bin/env python3
"""PyTorch baseline for `dvd bench language`: prefill and decode tokens/s of the same Qwen3
checkpoint on this machine's CPU.

Builds a mid-size random Qwen3 (hidden 1024, 12 layers, 16 heads, 8 KV heads, head_dim 64,
MLP 3072, vocab 32000; ~210 M parameters, f32), saves it as a plain Qwen3 checkpoint in --out,
then times (2 torch threads, inference mode, eager and SDPA attention):
  prefill   one forward over --prompt-tokens tokens (KV cache on)
  decode    --decode-tokens greedy steps of one token each with the KV cache
and prints one JSON object. Then run, on the same directory:
  dvd bench language --model DIR --prompt-tokens 512 --decode-tokens 32 --rounds 3 --json

Usage:  .venv/bin/python tools/bench_language_torch.py [--out DIR] [--prompt-tokens 512]
(requirements: tools/requirements-vision.txt)
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_vision_fixtures import rerandomise  # noqa: E402


def prompt(n, vocab):
    # The same ids as dvd's benchmark: (i * 7919 + 13) mod vocab.
    return [(i * 7919 + 13) % vocab for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/dvd-language-bench"))
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = Qwen3Config(vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                         max_position_embeddings=8192, tie_word_embeddings=False)
    model = Qwen3ForCausalLM._from_config(config, dtype=torch.float32).eval()
    rerandomise(model, 9)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    ids = torch.tensor([prompt(args.prompt_tokens, config.vocab_size)])
    report = {"torch": torch.__version__, "threads": args.threads, "prompt_tokens": args.prompt_tokens,
              "decode_tokens": args.decode_tokens,
              "parameters": sum(p.numel() for p in model.parameters())}
    for attn in ("eager", "sdpa"):
        model.config._attn_implementation = attn
        prefill, decode = [], []
        for r in range(args.rounds + 1):
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model(input_ids=ids, use_cache=True)
                t1 = time.perf_counter()
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                t2 = time.perf_counter()
                for _ in range(args.decode_tokens):
                    out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                t3 = time.perf_counter()
            if r > 0:  # the first round warms up
                prefill.append(t1 - t0)
                decode.append(t3 - t2)
        report[f"prefill_{attn}_tokens_per_s"] = args.prompt_tokens / statistics.median(prefill)
        report[f"decode_{attn}_tokens_per_s"] = args.decode_tokens / statistics.median(decode)
        report[f"prefill_{attn}_ms"] = statistics.median(prefill) * 1e3
        report[f"decode_{attn}_ms_per_token"] = statistics.median(decode) * 1e3 / args.decode_tokens
    print(json.dumps(report))


if __name__ == "__main__":
    main()
