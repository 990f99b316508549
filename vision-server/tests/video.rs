//! Video through FFmpeg: the model card's frames of clips FFmpeg makes here (H.264 with
//! B-frames in MP4, VP9 in WebM), each frame exactly what decoding the whole clip to `rgb24`
//! gives at that number; and bad files, each a typed error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dvd_vision_server::video::clips::{self, audio_only, ffmpeg_make};
use dvd_vision_server::video::{Ffmpeg, VideoError, VideoInfo, VideoLimits};

fn make(dir: &Path, args: &[&str]) -> PathBuf {
    ffmpeg_make(dir, args).unwrap()
}

fn h264_clip(dir: &Path) -> PathBuf {
    clips::h264_clip(dir, 320, 240).unwrap()
}

/// Every frame of `path` as `rgb24`, decoded in one go.
fn all_frames(path: &Path, width: u32, height: u32) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-noautorotate", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
        ])
        .args(["-pix_fmt", "rgb24", "pipe:1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
        .chunks(width as usize * height as usize * 3)
        .map(<[u8]>::to_vec)
        .collect()
}

fn ffmpeg() -> Ffmpeg {
    Ffmpeg::find().unwrap()
}

#[test]
fn the_cards_frames_of_an_h264_clip_with_b_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = h264_clip(dir.path());
    let video = ffmpeg()
        .open(&std::fs::read(&path).unwrap(), &VideoLimits::default())
        .unwrap();
    assert_eq!(
        video.info,
        VideoInfo {
            frames: 96,
            fps: 24.0,
            width: 320,
            height: 240,
            codec: "h264".into(),
            duration_s: 4.0,
        }
    );
    let indices = video.sample(8);
    assert_eq!(indices, [5, 17, 29, 41, 53, 64, 76, 88]);
    let every = all_frames(&path, 320, 240);
    assert_eq!(every.len(), 96);
    let mut got = Vec::new();
    video
        .frames(&indices, |n, frame| got.push((n, frame.into_raw())))
        .unwrap();
    assert_eq!(got.len(), 8);
    for (n, frame) in got {
        assert!(
            frame == every[n as usize],
            "frame {n} differs from the full decode"
        );
    }
}

#[test]
fn repeated_and_unordered_frames_decode_once_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = make(
        dir.path(),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=10",
            "-t",
            "2",
            "-c:v",
            "libvpx-vp9",
            "-b:v",
            "200k",
            "clip.webm",
        ],
    );
    let video = ffmpeg()
        .open(&std::fs::read(&path).unwrap(), &VideoLimits::default())
        .unwrap();
    assert_eq!((video.info.frames, video.info.codec.as_str()), (20, "vp9"));
    let every = all_frames(&path, 160, 120);
    let mut got = Vec::new();
    video
        .frames(&[19, 3, 3, 0], |n, frame| got.push((n, frame.into_raw())))
        .unwrap();
    let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [0, 3, 19]);
    assert!(got.iter().all(|(n, f)| *f == every[*n as usize]));
}

/// The error `open` gives for `bytes` under `limits`.
fn refused(bytes: &[u8], limits: &VideoLimits) -> VideoError {
    ffmpeg().open(bytes, limits).unwrap_err()
}

#[test]
fn bad_files_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let clip = std::fs::read(h264_clip(dir.path())).unwrap();
    let limits = VideoLimits::default();

    let noise: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(matches!(
        refused(&noise, &limits),
        VideoError::Unreadable(_)
    ));
    // MP4 writes its index last: the first half of the file has none.
    assert!(matches!(
        refused(&clip[..clip.len() / 2], &limits),
        VideoError::Unreadable(_)
    ));
    let audio = audio_only(dir.path()).unwrap();
    assert_eq!(
        refused(&std::fs::read(audio).unwrap(), &limits),
        VideoError::NoVideoStream
    );
    assert!(matches!(refused(b"", &limits), VideoError::Unreadable(_)));
    // Zero frames: FFmpeg writes an MP4 without a stream.
    let zero = make(
        dir.path(),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=96x72:rate=24",
            "-frames:v",
            "0",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "zero.mp4",
        ],
    );
    assert!(matches!(
        refused(&std::fs::read(zero).unwrap(), &limits),
        VideoError::NoVideoStream | VideoError::NoFrames
    ));

    let small = |limits: VideoLimits| refused(&clip, &limits);
    assert_eq!(
        small(VideoLimits {
            max_bytes: 1000,
            ..limits.clone()
        }),
        VideoError::TooLarge {
            bytes: clip.len(),
            limit: 1000
        }
    );
    assert_eq!(
        small(VideoLimits {
            max_pixels: 320 * 239,
            ..limits.clone()
        }),
        VideoError::TooManyPixels {
            width: 320,
            height: 240,
            limit: 320 * 239
        }
    );
    assert_eq!(
        small(VideoLimits {
            max_stream_frames: 95,
            ..limits.clone()
        }),
        VideoError::TooManyFrames {
            frames: 96,
            limit: 95
        }
    );
    assert_eq!(
        small(VideoLimits {
            max_duration_s: 3.5,
            ..limits.clone()
        }),
        VideoError::TooLong {
            seconds: 4.0,
            limit: 3.5
        }
    );
    assert!(matches!(
        small(VideoLimits {
            timeout: Duration::from_millis(1),
            ..limits.clone()
        }),
        VideoError::TimedOut { .. }
    ));
    // Every one of these is the request's fault.
    assert!(VideoError::NoVideoStream.is_bad_input());
}

#[test]
fn a_damaged_stream_is_a_decode_error_not_a_partial_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut clip = std::fs::read(h264_clip(dir.path())).unwrap();
    // Overwrite the middle of the media data: the index still lists 96 packets.
    let middle = clip.len() / 2;
    clip[middle..middle + 20_000].fill(0);
    let video = ffmpeg().open(&clip, &VideoLimits::default()).unwrap();
    let indices = video.sample(8);
    let mut delivered = 0;
    let result = video.frames(&indices, |_, _| delivered += 1);
    // Frames before the damage arrive; the missing ones make the whole call an error.
    assert!(matches!(result, Err(VideoError::Decode(_))), "{result:?}");
    assert!(delivered < 8);
}

#[test]
fn missing_programs_are_named() {
    let missing = PathBuf::from("/nonexistent/ffmpeg");
    let error = Ffmpeg::at(missing.clone(), missing).unwrap_err();
    assert!(matches!(&error, VideoError::NoDecoder(m) if m.contains("/nonexistent/ffmpeg")));
    assert!(!error.is_bad_input());
}
