//! Clips the video tests make with the `ffmpeg` program (not part of the server).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `ffmpeg -v error -y <args>` in `dir`; the file it wrote (the last argument).
pub fn ffmpeg_make(dir: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let status = Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .map_err(|e| {
            format!("the video tests need ffmpeg (Debian: apt-get install ffmpeg): {e}")
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
