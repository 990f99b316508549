#!/usr/bin/env python3
"""The stages of one image-chat request in torch, each alone with every core: what transformers'
own kernels take for the ViT, prefill and decode of an HF InternVL checkpoint, beside
`dvd bench vision` / `dvd bench language` on the same directory (docs/performance.md, "A real
peer on this machine").

  ViT      model.get_image_features on a batch of --tiles 448-px tiles (sdpa attention)
  prefill  the language model on one prompt of --prompt-tokens tokens
  decode   --decode-steps steps of --batch sequences after a --prompt-tokens prefill, KV cached

Prints one JSON object. Run with the peer venv (tools/peer/requirements.txt):
  VENV/bin/python tools/peer/stage_costs_torch.py --model DIR [--threads N]
dvd's side, same directory:
  dvd bench vision --model DIR --tiles 8 --image IMG; dvd bench language --model DIR --batch 8 \\
      --prompt-tokens 300 --decode-tokens 32
"""

import argparse
import json
import os
import time

import torch
from transformers import InternVLForConditionalGeneration


def best_of(rounds, fn):
    """The fastest of `rounds` timed calls, after one warm-up, in seconds."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    language = model.model.language_model
    head = model.lm_head
    side = model.config.vision_config.image_size
    side = side[0] if isinstance(side, (list, tuple)) else side
    vocab = model.config.text_config.vocab_size
    tiles = torch.randn(args.tiles, 3, side, side)
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens))
    batch = torch.randint(0, vocab, (args.batch, args.prompt_tokens))

    def decode():
        out = language(input_ids=batch, use_cache=True)
        cache = out.past_key_values
        token = head(out.last_hidden_state[:, -1:]).argmax(-1)
        start = time.perf_counter()
        for _ in range(args.decode_steps):
            out = language(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = head(out.last_hidden_state[:, -1:]).argmax(-1)
        return (time.perf_counter() - start) / args.decode_steps

    with torch.no_grad():
        vit = best_of(args.rounds, lambda: model.get_image_features(pixel_values=tiles))
        prefill = best_of(args.rounds, lambda: head(language(input_ids=prompt).last_hidden_state))
        decode()
        step = min(decode() for _ in range(args.rounds))
    print(json.dumps({
        "model": args.model,
        "torch": torch.__version__,
        "threads": args.threads,
        "vit_tiles_per_s": args.tiles / vit,
        "prefill_ms": prefill * 1e3,
        "prefill_tokens": args.prompt_tokens,
        "decode_ms_per_step": step * 1e3,
        "decode_batch": args.batch,
    }, indent=2))


if __name__ == "__main__":
    main()
