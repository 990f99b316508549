#!/usr/bin/env python3
"""Reference fixtures for dvd's video input (vision-server/src/video).

Reads a small synthetic H.264 clip with B-frames the way the InternVL3.5 model card's
`load_video` does, with PyAV in place of decord (both decode with FFmpeg and convert with
libswscale to rgb24): every frame of the video stream, its count, its average rate; the card's
`get_index` picks 8 frames; each frame is tiled by the card's `dynamic_preprocess` with
`max_num=1` (one tile, Pillow's bicubic resize, no thumbnail) and normalised; the
`vit300m-hf` vision fixture (tools/make_vision_fixtures.py) encodes them with transformers.

Writes into vision-server/tests/fixtures/video/:

  clip.mp4                 2 s of FFmpeg's testsrc2, 96x72 at 24 fps (48 frames), H.264
                           yuv420p, up to 2 B-frames in a row, a keyframe every 12 frames; made
                           with the system's ffmpeg (Debian 12's 5.1) and kept if present
                           (--new-clip makes it again)
  reference.safetensors    frame_count (i64 [1]), fps (f64 [1]), frame_indices (i64 [8]),
                           frames (u8 [8, 72, 96, 3], rgb24), pixel_values (f32 [8, 3, 56, 56]),
                           features (f32 [tokens, H]) of vit300m-hf

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-video.txt
        .venv/bin/python tools/make_video_fixtures.py
"""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_preprocess_fixtures import dynamic_preprocess  # noqa: E402
from make_vision_fixtures import MEAN, STD, TILE, features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "vision-server/tests/fixtures/video"
MODEL = ROOT / "vision-server/tests/fixtures/model/vit300m-hf"
SEGMENTS = 8


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


def pixel_values(frames):
    tiles = []
    for frame in frames:
        _, blocks = dynamic_preprocess(Image.fromarray(frame), 1, 1, TILE, True)
        assert len(blocks) == 1
        tiles.append(((np.asarray(blocks[0], np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(tiles)).contiguous()


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


if __name__ == "__main__":
    main()
