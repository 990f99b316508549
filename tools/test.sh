#!/usr/bin/env bash
# The README's test command: every unit and integration test of the workspace. The video tests
# make and decode clips with FFmpeg's programs, so where `ffmpeg` or `ffprobe` is missing this
# first installs Debian's FFmpeg (apt-get, as root or through sudo). Extra arguments go to
# `cargo test` (`-j2`, a test filter after `--`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    as_root=()
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    fi
    if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ ${#as_root[@]} -eq 0 ]; }; then
        echo "the video tests need FFmpeg's ffmpeg and ffprobe on PATH: install FFmpeg" >&2
        exit 1
    fi
    "${as_root[@]}" apt-get update
    "${as_root[@]}" apt-get install -y --no-install-recommends ffmpeg
fi
exec cargo test --workspace --locked --lib --bins --tests "$@"
