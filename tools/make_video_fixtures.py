#!/usr/bin/env python3
"""Reference fixtures for dvd's video input (vision-server/src/video).

Reads a small synthetic H.264 clip with B-frames the way the InternVL3.5 model card's
`load_video` does, with PyAV in place of decord (both decode with FFmpeg and convert with
libswscale to rgb24): every frame of the video stream, its count, its average rate; the card's
`get_index` picks 8 frames; each frame is tiled by the card's `dynamic_preprocess` with
`max_num=1` (one tile, Pillow's bicubic resize, no thumbnail) and normalised; the
`vit300m-hf` vision fixture (tools/make_vision_fixtures.py) encodes them with transformers.

Then the same 8 frames, tiled at the `internvl-dense-hf` language fixture's tile size
(tools/make_language_fixtures.py), prompt that whole small InternVL with transformers as its
InternVLProcessor does for a video: the shipped chat template writes `<video>\n` before the
question (and no system message), and the video becomes `Frame1: <img>..</img>\n...Frame8:
<img>..</img>` (one tile's tokens per frame), i.e. the model card's `Frame{i}: <image>\n` lines
before the question. The first question of QUESTIONS whose 16 greedy steps all keep a top-1/top-2
logit margin of at least make_language_fixtures.MIN_MARGIN, and that does not stop at <|im_end|>,
is kept (the model is never re-randomised).

Writes into vision-server/tests/fixtures/video/:

  clip.mp4                 2 s of FFmpeg's testsrc2, 96x72 at 24 fps (48 frames), H.264
                           yuv420p, up to 2 B-frames in a row, a keyframe every 12 frames; made
                           with the system's ffmpeg (Debian 12's 5.1) and kept if present
                           (--new-clip makes it again)
  reference.safetensors    frame_count (i64 [1]), fps (f64 [1]), frame_indices (i64 [8]),
                           frames (u8 [8, 72, 96, 3], rgb24), pixel_values (f32 [8, 3, 56, 56]),
                           features (f32 [tokens, H]) of vit300m-hf
  generate_reference.safetensors
                           internvl-dense-hf on the video prompt: question (u8, its UTF-8
                           bytes), video_ids (i64 prompt ids, frames expanded), video_logits (f32
                           [vocab], last prompt position after prefill), video_greedy (i64 [16])

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-video.txt
        .venv/bin/python tools/make_video_fixtures.py
"""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_language_fixtures import IM_END, MIN_MARGIN, STEPS, run  # noqa: E402
from make_preprocess_fixtures import dynamic_preprocess  # noqa: E402
from make_vision_fixtures import MEAN, STD, TILE, features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "vision-server/tests/fixtures/video"
MODEL = ROOT / "vision-server/tests/fixtures/model/vit300m-hf"
LANGUAGE_MODEL = ROOT / "language-server/tests/fixtures/model/internvl-dense-hf"
SEGMENTS = 8
# Asked in this order until one keeps every greedy step's margin (see the docstring).
QUESTIONS = [
    "What happens in this video?",
    "Describe this video.",
    "What is shown in these frames?",
    "What changes from frame to frame?",
    "What do you see in the video?",
]


def make_clip(path):
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x72:rate=24",
         "-t", "2", "-c:v", "libx264", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def read_all_frames(path):
    """Every frame of the first video stream as rgb24, and the stream's average rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate)


def get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    """The model card's get_index, as it is written."""
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([
        int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)
    ])


def pixel_values(frames, tile=TILE):
    tiles = []
    for frame in frames:
        _, blocks = dynamic_preprocess(Image.fromarray(frame), 1, 1, tile, True)
        assert len(blocks) == 1
        tiles.append(((np.asarray(blocks[0], np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(tiles)).contiguous()


def video_prompt(fast, tok, question, frames, tokens_per_frame):
    """transformers' prompt text and ids for `frames` frames then `question`: the checkpoint's chat
    template renders a video part as `<video>\n`, which InternVLProcessor.replace_video_token
    turns into the frames' lines joined by newlines."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<video>") == 1, text
    lines = "\n".join(f"Frame{i + 1}: <img>" + "<IMG_CONTEXT>" * tokens_per_frame + "</img>"
                      for i in range(frames))
    text = text.replace("<video>", lines)
    return text, tok.encode(text).ids


def generate_reference(chosen):
    """internvl-dense-hf's prompt ids, prefill logits and greedy tokens for the chosen frames."""
    config = json.loads((LANGUAGE_MODEL / "config.json").read_text())
    size = json.loads((LANGUAGE_MODEL / "preprocessor_config.json").read_text())["size"]
    vision = config["vision_config"]
    tile = size["height"]
    assert size["width"] == tile and vision["image_size"] == [tile, tile], (size, vision["image_size"])
    tokens_per_frame = round((tile // vision["patch_size"][0] * config["downsample_ratio"]) ** 2)
    assert tokens_per_frame == config["image_seq_length"], tokens_per_frame
    pv = pixel_values(chosen, tile)
    tok = Tokenizer.from_file(str(LANGUAGE_MODEL / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.chat_template = (LANGUAGE_MODEL / "chat_template.jinja").read_text()
    model = InternVLForConditionalGeneration.from_pretrained(LANGUAGE_MODEL, dtype=torch.float32).eval()
    tried = []
    for question in QUESTIONS:
        _, ids = video_prompt(fast, tok, question, len(chosen), tokens_per_frame)
        logits, greedy, margin = run(model, ids, pv)
        tried.append((question, round(margin, 4)))
        if margin >= MIN_MARGIN and IM_END not in greedy.tolist():
            break
    else:
        raise SystemExit(f"no question keeps a greedy margin of {MIN_MARGIN}: {tried}")
    assert len(greedy) == STEPS
    save_file({
        "question": torch.tensor(list(question.encode()), dtype=torch.uint8),
        "video_ids": torch.tensor(ids, dtype=torch.int64),
        "video_logits": logits.contiguous(),
        "video_greedy": greedy.to(torch.int64).contiguous(),
    }, str(OUT / "generate_reference.safetensors"))
    print(f"internvl-dense-hf: {len(ids)} prompt ids, {tokens_per_frame} tokens per frame; "
          f"question {question!r}; min margin {margin:.4f} (tried {tried}); greedy {greedy.tolist()}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    clip = OUT / "clip.mp4"
    if "--new-clip" in sys.argv or not clip.exists():
        make_clip(clip)
    frames, fps = read_all_frames(clip)
    indices = get_index(None, fps, len(frames) - 1, num_segments=SEGMENTS)
    chosen = [frames[i] for i in indices]
    pv = pixel_values(chosen)
    model = InternVLForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
    feats = features(model, pv)
    save_file({
        "frame_count": torch.tensor([len(frames)], dtype=torch.int64),
        "fps": torch.tensor([fps], dtype=torch.float64),
        "frame_indices": torch.from_numpy(indices.astype(np.int64)),
        "frames": torch.from_numpy(np.stack(chosen)),
        "pixel_values": pv,
        "features": feats.reshape(-1, feats.shape[-1]).contiguous(),
    }, str(OUT / "reference.safetensors"))
    print(f"{len(frames)} frames at {fps} fps; indices {indices.tolist()}; "
          f"features {tuple(feats.shape)}")
    generate_reference(chosen)


if __name__ == "__main__":
    main()
