#!/usr/bin/env python3
"""PyTorch (transformers, SDPA, bf16) baseline for dvd's GPU workloads, from a checkpoint dir
written by make_random_checkpoint.py (only its config.json is read).

Weights are NOT loaded: the modules are built from config.json and random-initialised directly
on the device (speed, not values, is measured; loading 16 GB would cost more device time than
the whole run). Measured, median of --iters samples after warm-ups (CUDA events on GPU):
  copy_bandwidth_gbps   device-to-device copy of a 2 GiB tensor, (read + write bytes) / time
  vision_tiles_per_s    InternViT + pixel shuffle + mlp1 projector on 448 px tiles, batch 1/8/32
  prefill_*             the language model (AutoModelForCausalLM of text_config) on 1900 tokens of
                        inputs_embeds (7 tiles x 256 + 108 text), one sequence, last-token logits
  decode_ms             one greedy step (logits + argmax on device, fed back) at batch 1 and 32
                        with 2048 cached positions in a transformers StaticCache (the position is
                        reset after every step so each step attends 2048 + 1 keys), eager and as a
                        captured CUDA graph (on capture failure: graph null + the error)
  decode_bound_ms       decode_weight_bytes / copy bandwidth (see decode_bound_convention)
Prints one JSON object (also written to --out). Everything runs under ~1 min on an H100.

Usage:  python tools/gpu/torch_baseline.py --checkpoint /tmp/ivl8b [--out FILE] [--iters 20]
        [--skip-vision] [--skip-language] [--device auto|cuda|cpu]
  CPU smoke test (tiny checkpoint, no CUDA graphs, short runs):
        python tools/gpu/torch_baseline.py --checkpoint DIR --device cpu --vision-batches 1,2
"""

import argparse
import gc
import inspect
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, InternVLConfig, StaticCache
from transformers.models.internvl.modeling_internvl import (
    InternVLModel,
    InternVLMultiModalProjector,
    InternVLVisionModel,
)

DTYPE = torch.bfloat16


class Timer:
    def __init__(self, device, iters, warmup):
        self.cuda = device.type == "cuda"
        self.iters, self.warmup = iters, warmup

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def median_ms(self, fn):
        for _ in range(self.warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(self.iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t) * 1e3)
        return statistics.median(samples)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def copy_bandwidth(device, timer, nbytes):
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src))
    del src, dst
    free(device)
    return 2 * nbytes / (ms / 1e3) / 1e9, ms


def bench_vision(config, device, timer, batches):
    vcfg = config.vision_config
    with torch.device(device):
        vit = InternVLVisionModel._from_config(vcfg, attn_implementation="sdpa", dtype=DTYPE).eval()
        projector = InternVLMultiModalProjector(config).to(DTYPE).eval()
    ratio = config.downsample_ratio

    def encode(pv):  # InternVLModel.get_image_features with vision_feature_layer -1, "default"
        h = vit(pixel_values=pv).last_hidden_state[:, 1:, :]
        b, n, d = h.shape
        g = int(n ** 0.5)
        h = InternVLModel.pixel_shuffle(None, h.reshape(b, g, g, d), scale_factor=ratio)
        return projector(h.reshape(b, -1, h.shape[-1]))

    side = vcfg.image_size[0] if isinstance(vcfg.image_size, (list, tuple)) else vcfg.image_size
    out = {"layers": vcfg.num_hidden_layers, "hidden": vcfg.hidden_size, "tile_px": side,
           "attn_implementation": vit.config._attn_implementation,
           "parameters": sum(p.numel() for p in vit.parameters()) + sum(p.numel() for p in projector.parameters())}
    tiles, ms_all = {}, {}
    for b in batches:
        pv = torch.randn(b, 3, side, side, dtype=DTYPE, device=device)
        feats = encode(pv)
        out.setdefault("tokens_per_tile", feats.shape[1])
        ms = timer.median_ms(lambda: encode(pv))
        tiles[str(b)] = round(b / (ms / 1e3), 2)
        ms_all[str(b)] = round(ms, 3)
        del pv, feats
    del vit, projector
    free(device)
    return out, tiles, ms_all


def set_position(cache, pos):
    """StaticCache writes at (and masks up to) each layer's on-device `cumulative_length`."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(pos)


def bench_language(config, device, timer, prefill_tokens, context, batches, graphs):
    tcfg = config.text_config
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(tcfg, attn_implementation="sdpa", dtype=DTYPE).eval()
    cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    embed = lm.get_input_embeddings().weight
    info = {"class": type(lm).__name__, "layers": tcfg.num_hidden_layers, "hidden": tcfg.hidden_size,
            "heads": tcfg.num_attention_heads, "kv_heads": tcfg.num_key_value_heads, "head_dim": tcfg.head_dim,
            "intermediate": tcfg.intermediate_size, "vocab": tcfg.vocab_size,
            "attn_implementation": lm.config._attn_implementation, "cache_kwarg": cache_kw,
            "parameters": sum(p.numel() for p in lm.parameters())}
    res = {"language": info, "weight_bytes": weight_bytes,
           "decode_weight_bytes": weight_bytes - embed.numel() * embed.element_size()}

    # Prefill: one sequence of inputs_embeds, KV cache on, last-token logits only.
    emb = (0.02 * torch.randn(1, prefill_tokens, tcfg.hidden_size, device=device)).to(DTYPE)
    ms = timer.median_ms(lambda: lm(inputs_embeds=emb, use_cache=True, logits_to_keep=1).logits.argmax(-1))
    res.update(prefill_tokens=prefill_tokens, prefill_ms=round(ms, 3),
               prefill_tokens_per_s=round(prefill_tokens / (ms / 1e3), 1))
    del emb
    free(device)

    # Decode: StaticCache of context + 1 slots; every step writes slot `context` and attends all.
    decode, errors, kv_bytes = {}, {}, {}
    for b in batches:
        cache = StaticCache(config=tcfg, max_cache_len=context + 1)
        set_position(cache, context)
        ids = torch.zeros(b, 1, dtype=torch.long, device=device)
        pos = torch.full((b, 1), context, dtype=torch.long, device=device)

        def step():
            logits = lm(input_ids=ids, position_ids=pos, use_cache=True, **{cache_kw: cache}).logits
            ids.copy_(logits[:, -1:].argmax(-1))
            set_position(cache, context)

        row = {"eager": round(timer.median_ms(step), 3), "graph": None}
        kv_bytes[str(b)] = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
        if graphs:
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        step()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                row["graph"] = round(timer.median_ms(graph.replay), 3)
                del graph
            except Exception as e:  # noqa: BLE001 - recorded in the JSON
                errors[str(b)] = f"{type(e).__name__}: {e}"[:500]
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001
                    pass
        else:
            errors[str(b)] = "CUDA graphs skipped (not on a CUDA device)"
        decode[str(b)] = row
        del cache, ids, pos
        free(device)
    res.update(decode_context=context, decode_ms=decode, kv_cache_bytes=kv_bytes)
    if errors:
        res["decode_graph_error"] = errors
    del lm
    free(device)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--iters", type=int, help="timed samples per measurement (default 20; cpu 2)")
    ap.add_argument("--warmup", type=int, help="untimed runs first (default 3; cpu 1)")
    ap.add_argument("--skip-vision", action="store_true")
    ap.add_argument("--skip-language", action="store_true")
    ap.add_argument("--vision-batches", default="1,8,32")
    ap.add_argument("--decode-batches", default="1,32")
    ap.add_argument("--prefill-tokens", type=int, default=7 * 256 + 108)
    ap.add_argument("--context", type=int, default=2048, help="cached positions for decode")
    ap.add_argument("--copy-mib", type=int, help="copy size (default 2048; cpu 64)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    cuda = device.type == "cuda"
    timer = Timer(device, args.iters or (20 if cuda else 2), args.warmup if args.warmup is not None else (3 if cuda else 1))
    config = InternVLConfig.from_pretrained(args.checkpoint)

    report = {
        "gpu": {"name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu"),
                "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
                "transformers": transformers.__version__},
        "device": str(device), "checkpoint": str(args.checkpoint), "dtype": "bf16",
        "weights": "random, initialised on the device from config.json (not loaded)",
        "iters": timer.iters, "warmup": timer.warmup, "statistic": "median",
    }
    errors = {}
    with torch.inference_mode():
        try:
            nbytes = (args.copy_mib or (2048 if cuda else 64)) << 20
            gbps, ms = copy_bandwidth(device, timer, nbytes)
            report.update(copy_bandwidth_gbps=round(gbps, 1), copy_bytes=nbytes, copy_ms=round(ms, 3),
                          copy_convention="GB/s = 2 x bytes (read + write) / time, 1 GB = 1e9 B")
        except Exception as e:  # noqa: BLE001
            errors["copy"] = f"{type(e).__name__}: {e}"
        if not args.skip_vision:
            try:
                info, tiles, ms = bench_vision(config, device, timer, [int(b) for b in args.vision_batches.split(",")])
                report.update(vision=info, vision_tiles_per_s=tiles, vision_ms=ms)
            except Exception as e:  # noqa: BLE001
                errors["vision"] = f"{type(e).__name__}: {e}"
            free(device)
        if not args.skip_language:
            try:
                report.update(bench_language(config, device, timer, args.prefill_tokens, args.context,
                                             [int(b) for b in args.decode_batches.split(",")], graphs=cuda))
            except Exception as e:  # noqa: BLE001
                errors["language"] = f"{type(e).__name__}: {e}"
    if "copy_bandwidth_gbps" in report and "decode_weight_bytes" in report:
        # The copy moves read + write bytes at the rate the memory system sustains; a step that
        # reads N bytes takes at least N / that rate.
        read_gbps = report["copy_bandwidth_gbps"]
        report["decode_bound_ms"] = round(report["decode_weight_bytes"] / (read_gbps * 1e9) * 1e3, 3)
        report["decode_bound_ms_with_kv"] = {
            b: round((report["decode_weight_bytes"] + kv) / (read_gbps * 1e9) * 1e3, 3)
            for b, kv in report.get("kv_cache_bytes", {}).items()}
        report["decode_bound_convention"] = (
            "bytes read once per step / memory bandwidth, memory bandwidth = copy_bandwidth_gbps (bytes read "
            "+ written per second by a device-to-device copy); decode_weight_bytes = all language-model parameters except the "
            "embedding table (only B rows of it are read); _with_kv adds the whole StaticCache (K and V)")
    if cuda:
        report["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    if errors:
        report["errors"] = errors
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
