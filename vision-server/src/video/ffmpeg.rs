//! Video through FFmpeg's own programs, one child process per step, so that parsing untrusted
//! media never runs inside the server: `ffprobe` counts the video stream's frames as its
//! demuxer reads them and reports size, rate and codec; `ffmpeg` decodes the chosen frames to
//! RGB (`rgb24`, FFmpeg's own conversion) one at a time on a pipe. Every step runs under the
//! limits of [`VideoLimits`], a deadline included.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde_json::Value;

use super::error::VideoError;
use super::sampling::{Bound, frame_indices};

/// What one video may be.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoLimits {
    /// Largest file, bytes.
    pub max_bytes: usize,
    /// Longest clip, seconds.
    pub max_duration_s: f64,
    /// Largest frame, pixels (width x height).
    pub max_pixels: u64,
    /// Most frames in the video stream.
    pub max_stream_frames: u64,
    /// Longest each of probing and decoding may take.
    pub timeout: Duration,
}

impl Default for VideoLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_duration_s: 600.0,
            max_pixels: 3840 * 2160,
            max_stream_frames: 36_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The FFmpeg programs.
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
}

/// How a server decodes videos: FFmpeg's programs (or why it has none) and the limits every
/// video is held to.
#[derive(Debug, Clone)]
pub struct VideoDecoder {
    ffmpeg: Result<Ffmpeg, VideoError>,
    /// What each video may be.
    pub limits: VideoLimits,
}

impl VideoDecoder {
    /// FFmpeg as [`Ffmpeg::find`] finds it; without it, every video is refused with the reason
    /// while images work as ever.
    pub fn find(limits: VideoLimits) -> Self {
        Self {
            ffmpeg: Ffmpeg::find(),
            limits,
        }
    }

    /// Why this server cannot decode videos, if it cannot.
    pub fn unavailable(&self) -> Option<&VideoError> {
        self.ffmpeg.as_ref().err()
    }

    /// [`Ffmpeg::open`] under this decoder's limits.
    pub fn open(&self, bytes: &[u8]) -> Result<Video, VideoError> {
        self.ffmpeg
            .as_ref()
            .map_err(Clone::clone)?
            .open(bytes, &self.limits)
    }
}

/// What `ffprobe` found in a video's first video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Frames, as the demuxer counts the stream's packets.
    pub frames: u64,
    /// Average frame rate.
    pub fps: f64,
    /// Frame width, pixels.
    pub width: u32,
    /// Frame height, pixels.
    pub height: u32,
    /// FFmpeg's name of the codec (`h264`, `vp9`, ...).
    pub codec: String,
    /// Length, seconds.
    pub duration_s: f64,
}

/// A video written where FFmpeg can read it (deleted on drop), probed and within its limits.
#[derive(Debug)]
pub struct Video {
    file: tempfile::NamedTempFile,
    /// What the probe found.
    pub info: VideoInfo,
    ffmpeg: PathBuf,
    timeout: Duration,
}

impl Ffmpeg {
    /// `ffmpeg` and `ffprobe` from `$DVD_FFMPEG` / `$DVD_FFPROBE`, else from `PATH`.
    pub fn find() -> Result<Self, VideoError> {
        let program = |variable: &str, name: &str| {
            std::env::var_os(variable).map_or_else(|| PathBuf::from(name), PathBuf::from)
        };
        Self::at(
            program("DVD_FFMPEG", "ffmpeg"),
            program("DVD_FFPROBE", "ffprobe"),
        )
    }

    /// The programs at these paths; an error naming what is missing when either cannot run.
    pub fn at(ffmpeg: PathBuf, ffprobe: PathBuf) -> Result<Self, VideoError> {
        for path in [&ffmpeg, &ffprobe] {
            let ran = Command::new(path)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match ran {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    return Err(VideoError::NoDecoder(format!(
                        "{} -version exited with {status}",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(VideoError::NoDecoder(format!(
                        "{} cannot run ({e}); install FFmpeg, or name its programs in \
                         DVD_FFMPEG and DVD_FFPROBE",
                        path.display()
                    )));
                }
            }
        }
        Ok(Self { ffmpeg, ffprobe })
    }

    /// Writes `bytes` to a private temporary file, probes it and checks it against `limits`.
    pub fn open(&self, bytes: &[u8], limits: &VideoLimits) -> Result<Video, VideoError> {
        if bytes.len() > limits.max_bytes {
            return Err(VideoError::TooLarge {
                bytes: bytes.len(),
                limit: limits.max_bytes,
            });
        }
        let mut file = tempfile::Builder::new()
            .prefix("dvd-video-")
            .tempfile()
            .map_err(|e| VideoError::Io(format!("temporary file: {e}")))?;
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .map_err(|e| VideoError::Io(format!("temporary file: {e}")))?;
        let info = self.probe(file.path(), limits.timeout)?;
        check(&info, limits)?;
        Ok(Video {
            file,
            info,
            ffmpeg: self.ffmpeg.clone(),
            timeout: limits.timeout,
        })
    }

    fn probe(&self, path: &Path, timeout: Duration) -> Result<VideoInfo, VideoError> {
        let mut command = Command::new(&self.ffprobe);
        command
            .args(["-v", "error", "-select_streams", "v:0", "-count_packets"])
            .args(["-show_entries"])
            .arg("stream=codec_name,width,height,avg_frame_rate,nb_read_packets:format=duration")
            .args(["-of", "json"])
            .arg(path);
        let (status, stdout, stderr) = run(command, timeout, None, |_| Ok(()))?;
        if !status.success() {
            return Err(VideoError::Unreadable(first_line(&stderr)));
        }
        let found: Value = serde_json::from_slice(&stdout)
            .map_err(|e| VideoError::Unreadable(format!("ffprobe's report: {e}")))?;
        let Some(stream) = found["streams"].get(0) else {
            return Err(VideoError::NoVideoStream);
        };
        let number = |v: &Value| -> Option<f64> {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        let frames = number(&stream["nb_read_packets"]).unwrap_or(0.0) as u64;
        let fps = stream["avg_frame_rate"]
            .as_str()
            .and_then(rate)
            .filter(|r| *r > 0.0)
            .unwrap_or(0.0);
        let duration_s = number(&found["format"]["duration"])
            .or_else(|| (fps > 0.0).then(|| frames as f64 / fps))
            .unwrap_or(0.0);
        Ok(VideoInfo {
            frames,
            fps,
            width: number(&stream["width"]).unwrap_or(0.0) as u32,
            height: number(&stream["height"]).unwrap_or(0.0) as u32,
            codec: stream["codec_name"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            duration_s,
        })
    }
}

impl Video {
    /// The frame numbers the model card samples for `segments` frames of the whole clip.
    pub fn sample(&self, segments: u32) -> Vec<u64> {
        frame_indices(self.info.frames, self.info.fps, segments, Bound::WHOLE)
    }

    /// Decodes the frames numbered `indices` (any order, repeats allowed) and hands each
    /// distinct one to `each` in increasing order as soon as it is decoded, with its number.
    pub fn frames(
        &self,
        indices: &[u64],
        mut each: impl FnMut(u64, RgbImage),
    ) -> Result<(), VideoError> {
        let mut wanted: Vec<u64> = indices.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let select: Vec<String> = wanted.iter().map(|n| format!("eq(n\\,{n})")).collect();
        let mut command = Command::new(&self.ffmpeg);
        command
            .args(["-v", "error", "-nostdin", "-noautorotate", "-i"])
            .arg(self.file.path())
            .args(["-map", "0:v:0", "-an", "-sn", "-dn"])
            .arg("-vf")
            .arg(format!("select='{}'", select.join("+")))
            .args([
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "pipe:1",
            ]);
        let (width, height) = (self.info.width, self.info.height);
        let frame_bytes = width as usize * height as usize * 3;
        let mut next = wanted.iter();
        let (status, _, stderr) = run(command, self.timeout, Some(frame_bytes), |frame| {
            let Some(&number) = next.next() else {
                return Err(VideoError::Decode(
                    "ffmpeg gave more frames than asked".into(),
                ));
            };
            let image = RgbImage::from_raw(width, height, frame.to_vec())
                .ok_or_else(|| VideoError::Decode("a frame of the wrong size".into()))?;
            each(number, image);
            Ok(())
        })?;
        if !status.success() {
            let message = first_line(&stderr);
            return Err(
                match message.contains("Decoder") && message.contains("not found") {
                    true => VideoError::Unsupported(self.info.codec.clone()),
                    false => VideoError::Decode(message),
                },
            );
        }
        let missing = next.count();
        if missing > 0 {
            return Err(VideoError::Decode(format!(
                "{missing} of the {} chosen frames could not be decoded (the stream counts {} \
                 packets; a damaged or truncated file?)",
                wanted.len(),
                self.info.frames
            )));
        }
        Ok(())
    }
}

/// Whether `info` is within `limits`.
fn check(info: &VideoInfo, limits: &VideoLimits) -> Result<(), VideoError> {
    if info.frames == 0 {
        return Err(VideoError::NoFrames);
    }
    if info.width == 0 || info.height == 0 {
        return Err(VideoError::Unreadable(format!(
            "the video stream has no size ({}x{})",
            info.width, info.height
        )));
    }
    let pixels = u64::from(info.width) * u64::from(info.height);
    if pixels > limits.max_pixels {
        return Err(VideoError::TooManyPixels {
            width: info.width,
            height: info.height,
            limit: limits.max_pixels,
        });
    }
    if info.frames > limits.max_stream_frames {
        return Err(VideoError::TooManyFrames {
            frames: info.frames,
            limit: limits.max_stream_frames,
        });
    }
    if info.duration_s > limits.max_duration_s {
        return Err(VideoError::TooLong {
            seconds: info.duration_s,
            limit: limits.max_duration_s,
        });
    }
    Ok(())
}

/// `num/den` as FFmpeg writes rates.
fn rate(text: &str) -> Option<f64> {
    let (num, den) = text.split_once('/')?;
    let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
    (den != 0.0).then(|| num / den)
}

fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    line.chars().take(300).collect()
}

/// Runs `command` until it exits or `timeout` passes (then kills it): its status, its stdout
/// without `chunk` (with it, stdout goes to `on_chunk` in pieces of `chunk` bytes instead) and
/// the start of its stderr.
fn run(
    mut command: Command,
    timeout: Duration,
    chunk: Option<usize>,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), VideoError>,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), VideoError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| VideoError::NoDecoder(format!("cannot start FFmpeg: {e}")))?;
    let deadline = Instant::now() + timeout;
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.by_ref().take(64 << 10).read_to_end(&mut text);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            text
        })
    });
    // A watchdog kills the child at the deadline; reading its stdout then ends.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = matches!(
            done_rx.recv_timeout(timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        timed_out
    });
    let read = read_stdout(&mut child, chunk, &mut on_chunk);
    let status = child.wait();
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false) || Instant::now() > deadline;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if timed_out {
        return Err(VideoError::TimedOut {
            seconds: timeout.as_secs_f64(),
        });
    }
    let stdout = read?;
    let status = status.map_err(|e| VideoError::Io(format!("waiting for FFmpeg: {e}")))?;
    Ok((status, stdout, stderr))
}

/// All of `child`'s stdout (no `chunk`), or every whole `chunk` of it handed to
/// `on_chunk`; an error from `on_chunk` kills the child.
fn read_stdout(
    child: &mut Child,
    chunk: Option<usize>,
    on_chunk: &mut impl FnMut(&[u8]) -> Result<(), VideoError>,
) -> Result<Vec<u8>, VideoError> {
    let Some(mut pipe) = child.stdout.take() else {
        return Ok(Vec::new());
    };
    let io = |e: std::io::Error| VideoError::Io(format!("reading FFmpeg's output: {e}"));
    let Some(chunk) = chunk else {
        let mut all = Vec::new();
        pipe.read_to_end(&mut all).map_err(io)?;
        return Ok(all);
    };
    let mut buffer = vec![0; chunk];
    loop {
        let mut filled = 0;
        while filled < chunk {
            match pipe.read(&mut buffer[filled..]).map_err(io)? {
                0 => break,
                n => filled += n,
            }
        }
        if filled < chunk {
            // The end (a partial frame means the child was stopped mid-frame).
            return Ok(Vec::new());
        }
        if let Err(e) = on_chunk(&buffer) {
            let _ = child.kill();
            return Err(e);
        }
    }
}
