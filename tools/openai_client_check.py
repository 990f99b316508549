#!/usr/bin/env python3
"""Checks a running dvd gateway with the official `openai` Python client (pinned in
tools/requirements-openai.txt): model list, a plain chat completion, a streamed one, and one
with an image sent as a data: URL, videos as `video_url` parts (4 and 8 frames: 8 costs more
prompt tokens; 1000 frames is a 400 naming `max_frames`). Exits non-zero on the first failure.

Usage: python tools/openai_client_check.py --base-url http://127.0.0.1:8000/v1 --image IMG \
           --video CLIP.mp4
(waits up to --wait seconds for the gateway's /health first)
"""

import argparse
import base64
import sys
import time
import urllib.request

from openai import BadRequestError, OpenAI


def wait_healthy(base_url, seconds):
    health = base_url.rsplit("/v1", 1)[0] + "/health"
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit(f"gateway at {health} never became healthy")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--wait", type=float, default=120)
    args = ap.parse_args()
    wait_healthy(args.base_url, args.wait)
    client = OpenAI(base_url=args.base_url, api_key="unused")

    models = [m.id for m in client.models.list()]
    assert models, "no models listed"
    model = models[0]

    plain = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=8,
        temperature=0,
    )
    assert plain.choices[0].message.content, plain
    assert plain.choices[0].finish_reason in ("stop", "length"), plain
    assert plain.usage.completion_tokens > 0, plain

    pieces = []
    finish = None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == plain.choices[0].message.content, (pieces, plain)
    assert finish == plain.choices[0].finish_reason, finish

    with open(args.image, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    image = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is shown in the picture?"},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
    )
    assert image.choices[0].message.content, image
    assert image.usage.prompt_tokens > plain.usage.prompt_tokens, (image.usage, plain.usage)

    # A video as vLLM takes it: a `video_url` part (the client passes content parts through).
    with open(args.video, "rb") as f:
        clip = "data:video/mp4;base64," + base64.b64encode(f.read()).decode()

    def ask_video(num_frames):
        return client.chat.completions.create(
            model=model,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": clip, "num_frames": num_frames}},
                        {"type": "text", "text": "What happens in the video?"},
                    ],
                }
            ],
            max_tokens=8,
            temperature=0,
        )

    four, eight = ask_video(4), ask_video(8)
    assert four.choices[0].message.content, four
    per_frame = (eight.usage.prompt_tokens - four.usage.prompt_tokens) / 4
    assert per_frame > 0, (four.usage, eight.usage)
    try:
        ask_video(1000)
        raise AssertionError("1000 frames were accepted")
    except BadRequestError as e:
        assert "max_frames" in str(e), e
    print(
        f"openai {__import__('openai').__version__} client: models, plain, streaming, image and "
        f"video requests OK ({per_frame:.0f} prompt tokens per frame; too many frames a 400)"
    )


if __name__ == "__main__":
    main()
