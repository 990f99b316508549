//! Clips the video tests and benchmarks make with the `ffmpeg` program (not part of the server).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image::RgbImage;

/// Runs `ffmpeg -v error -y <args>` in `dir`; the file it wrote (the last argument).
pub fn ffmpeg_make(dir: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let status = Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .map_err(|e| {
            format!("the video tests need ffmpeg (tools/test.sh installs it; Debian: apt-get install ffmpeg): {e}")
        })?;
    if !status.success() {
        return Err(format!("ffmpeg {args:?} exited with {status}"));
    }
    Ok(dir.join(args.last().copied().unwrap_or_default()))
}

/// `clip.mp4`: 4 s of FFmpeg's test pattern at 24 fps (96 frames) of `width`x`height`, H.264
/// with up to 2 B-frames in a row, a keyframe every 12 frames.
pub fn h264_clip(dir: &Path, width: u32, height: u32) -> Result<PathBuf, String> {
    let source = format!("testsrc2=size={width}x{height}:rate=24");
    ffmpeg_make(
        dir,
        &[
            "-f", "lavfi", "-i", &source, "-t", "4", "-c:v", "libx264", "-bf", "2", "-g", "12",
            "-pix_fmt", "yuv420p", "clip.mp4",
        ],
    )
}

/// `audio.m4a`: one second of a sine tone, AAC, no video.
pub fn audio_only(dir: &Path) -> Result<PathBuf, String> {
    ffmpeg_make(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:a",
            "aac",
            "audio.m4a",
        ],
    )
}

/// An MP4 (H.264 yuv420p, up to 2 B-frames in a row) of `frames` (all one size) at `fps`.
pub fn h264_from_frames(frames: &[RgbImage], fps: u32) -> Result<Vec<u8>, String> {
    let Some(first) = frames.first() else {
        return Err("a clip needs at least one frame".into());
    };
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let path = dir.path().join("clip.mp4");
    let size = format!("{}x{}", first.width(), first.height());
    let mut child = Command::new("ffmpeg")
        .args([
            "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &size,
        ])
        .args([
            "-r",
            &fps.to_string(),
            "-i",
            "pipe:0",
            "-c:v",
            "libx264",
            "-bf",
            "2",
        ])
        .args(["-pix_fmt", "yuv420p"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("making a clip needs ffmpeg (Debian: apt-get install ffmpeg): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("ffmpeg's stdin")?;
    for frame in frames {
        if frame.dimensions() != first.dimensions() {
            return Err("the frames of a clip must be one size".into());
        }
        stdin
            .write_all(frame.as_raw())
            .map_err(|e| format!("writing to ffmpeg: {e}"))?;
    }
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for ffmpeg: {e}"))?;
    if !status.success() {
        return Err(format!("ffmpeg exited with {status} making a clip"));
    }
    std::fs::read(&path).map_err(|e| format!("reading the clip: {e}"))
}
