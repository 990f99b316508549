#!/usr/bin/env python3
"""A Python client of dvd's public gRPC API (dvd.api.v1.InferenceService), with stubs generated
from proto/ by grpcio-tools (pinned in tools/requirements-grpc.txt) at start: health, the model
list, and a streamed chat with an image (and with --video a video's sampled frames), printed as
it arrives. CI runs it against `dvd up`
beside the openai client check; with --check it exits non-zero unless every call behaves.

Usage: python tools/grpc_client_example.py --target 127.0.0.1:8001 --image IMG
           [--video CLIP --num-frames 8] [--check]
(the gateway's gRPC port is its HTTP port + 1 under `dvd up`; waits up to --wait seconds for it)
"""

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto" / "proto"
FILES = ["dvd/common/v1/common.proto", "dvd/api/v1/api.proto"]


def stubs():
    """Generates the Python stubs of the public API into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="dvd-grpc-stubs-")
    grpc_include = Path(protoc.__file__).resolve().parent / "_proto"
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *[str(PROTO_ROOT / f) for f in FILES],
    ])
    if status != 0:
        sys.exit(f"protoc failed ({status})")
    sys.path.insert(0, out)
    api = importlib.import_module("dvd.api.v1.api_pb2")
    api_grpc = importlib.import_module("dvd.api.v1.api_pb2_grpc")
    common = importlib.import_module("dvd.common.v1.common_pb2")
    return api, api_grpc, common


def wait_serving(stub, api, common, seconds):
    deadline = time.time() + seconds
    while True:
        try:
            health = stub.Health(api.HealthRequest(), timeout=2)
            if health.status == common.SERVING_STATUS_SERVING:
                return health
        except grpc.RpcError:
            pass
        if time.time() > deadline:
            sys.exit(f"the gateway never reported SERVING within {seconds} s")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:8001")
    ap.add_argument("--image", required=True)
    ap.add_argument("--video", help="a video to ask about too, after the image")
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--question", default="What is shown in the picture?")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--wait", type=float, default=120)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    api, api_grpc, common = stubs()
    with grpc.insecure_channel(args.target) as channel:
        stub = api_grpc.InferenceServiceStub(channel)
        health = wait_serving(stub, api, common, args.wait)
        print(f"gateway {health.version}: {health.vision_servers_ready} vision, "
              f"{health.language_servers_ready} language servers ready")
        models = stub.ListModels(api.ListModelsRequest()).models
        print("models:", ", ".join(m.id for m in models))

        content = [api.ContentPart(image=api.Image(data=Path(args.image).read_bytes()))]
        if args.video:
            # The vision server samples the video's frames as the model card does.
            content.append(api.ContentPart(video=api.Video(
                data=Path(args.video).read_bytes(), num_frames=args.num_frames)))
        content.append(api.ContentPart(text=args.question))
        request = api.ChatRequest(
            model=models[0].id,
            messages=[api.Message(role="user", content=content)],
            sampling=common.SamplingParams(temperature=0, max_tokens=args.max_tokens),
        )
        text, done = [], None
        for event in stub.Chat(request):
            if event.HasField("delta"):
                text.append(event.delta.content)
                print(event.delta.content, end="", flush=True)
            elif event.HasField("done"):
                done = event.done
        print()
        if done is not None:
            print(f"finish {common.FinishReason.Name(done.finish_reason)}, "
                  f"{done.usage.prompt_tokens} prompt + {done.usage.completion_tokens} completion "
                  f"tokens, first token after {done.timings.time_to_first_token_us / 1000:.1f} ms")

        # A request the gateway refuses is a gRPC status with a message.
        try:
            next(iter(stub.Chat(api.ChatRequest(model="no-such-model"))))
            refused = None
        except grpc.RpcError as e:
            refused = e.code()
            print(f"unknown model: {refused.name}: {e.details()}")

    if args.check:
        problems = []
        if not models:
            problems.append("no models listed")
        if not "".join(text):
            problems.append("no text streamed")
        if done is None or done.usage.completion_tokens == 0:
            problems.append(f"no final summary with tokens: {done}")
        elif done.usage.prompt_tokens <= len(args.question.split()):
            problems.append(f"the image added no prompt tokens: {done.usage}")
        elif args.video and done.usage.image_tokens < 1 + args.num_frames:
            problems.append(f"fewer image tokens than the image and the frames: {done.usage}")
        if refused != grpc.StatusCode.NOT_FOUND:
            problems.append(f"an unknown model gave {refused}, not NOT_FOUND")
        if problems:
            sys.exit("gRPC client check failed: " + "; ".join(problems))
        asked = "image and video" if args.video else "image"
        print(f"grpcio {grpc.__version__} client: health, models, streamed {asked} chat and a "
              "refusal OK")


if __name__ == "__main__":
    main()
