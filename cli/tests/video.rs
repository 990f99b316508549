//! `dvd encode --video`: the model card's frames of a clip, each encoded exactly as the same
//! frame given as an image, with the frame numbers written beside the features; bad video is a
//! clear error.

use std::path::{Path, PathBuf};

use dvd_vision_server::video::clips::{audio_only, ffmpeg_make, h264_clip};

use crate::common::{assert_success, dvd, json_output, language_fixture};

const MODEL: &str = "internvl-moe-custom-bf16";

/// Frame `n` of `dir/clip.mp4` as a lossless PNG (`f{n}.png`), converted to RGB as video frames
/// are.
fn frame_png(dir: &Path, n: u64) -> PathBuf {
    let select = format!("select=eq(n\\,{n})");
    let name = format!("f{n}.png");
    ffmpeg_make(
        dir,
        &[
            "-i",
            "clip.mp4",
            "-vf",
            &select,
            "-fps_mode",
            "passthrough",
            "-frames:v",
            "1",
            "-pix_fmt",
            "rgb24",
            &name,
        ],
    )
    .unwrap()
}

/// A tensor of a safetensors file as raw little-endian bytes, with its shape.
fn tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<u8>) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.shape().to_vec(), t.data().to_vec())
}

fn i64s(data: &[u8]) -> Vec<i64> {
    data.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn video_frames_encode_as_the_same_frames_given_as_images() {
    let dir = tempfile::tempdir().unwrap();
    // 4 s at 24 fps (96 frames), H.264 with B-frames, odd size so the frame is resized.
    let clip = h264_clip(dir.path(), 352, 288).unwrap();
    let model = language_fixture(MODEL);
    let out = dir.path().join("video.safetensors");
    let summary = json_output(
        dvd()
            .args(["encode", "--model"])
            .arg(&model)
            .arg("--video")
            .arg(&clip)
            .args(["--num-frames", "8", "--out"])
            .arg(&out),
    );
    assert_eq!(
        summary["frame_indices"],
        serde_json::json!([5, 17, 29, 41, 53, 64, 76, 88])
    );
    let bytes = std::fs::read(&out).unwrap();
    let (shape, _) = tensor(&bytes, "pixel_values");
    assert_eq!(shape[0], 8, "one tile per frame");
    assert_eq!(i64s(&tensor(&bytes, "tiles_per_image").1), [1; 8]);
    assert_eq!(
        i64s(&tensor(&bytes, "frame_indices").1),
        [5, 17, 29, 41, 53, 64, 76, 88]
    );
    let (feature_shape, features) = tensor(&bytes, "features");
    let per_frame = features.len() / 8;

    // Frame 64 (the sixth) as a lossless PNG, encoded as an image of one tile.
    let png = frame_png(dir.path(), 64);
    let image_out = dir.path().join("image.safetensors");
    let image = dvd()
        .args(["encode", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&png)
        .args(["--max-tiles", "1", "--out"])
        .arg(&image_out)
        .output()
        .unwrap();
    assert_success(&image);
    let image_bytes = std::fs::read(&image_out).unwrap();
    // The same pixels in, exactly.
    let (_, pixels) = tensor(&bytes, "pixel_values");
    let (_, image_pixels) = tensor(&image_bytes, "pixel_values");
    let per_tile = pixels.len() / 8;
    assert!(
        image_pixels == pixels[5 * per_tile..6 * per_tile],
        "frame 64's pixel values differ from the same frame given as an image"
    );
    // The same features out, but for the order of sums in a batch of 8 tiles against 1: 5.8e-7
    // of the largest feature measured.
    let (image_shape, image_features) = tensor(&image_bytes, "features");
    assert_eq!(image_shape[1], feature_shape[1]);
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (video, alone) = (
        floats(&features[5 * per_frame..6 * per_frame]),
        floats(&image_features),
    );
    let scale = alone.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = video
        .iter()
        .zip(&alone)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 2e-6 * scale,
        "features differ by {worst} (largest {scale})"
    );
}

#[test]
fn bad_video_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let audio = audio_only(dir.path()).unwrap();
    let noise = dir.path().join("noise.mp4");
    std::fs::write(&noise, vec![7u8; 4096]).unwrap();
    for (file, message) in [
        (&audio, "no video stream"),
        (&noise, "not a readable video"),
    ] {
        let out = dvd()
            .args(["encode", "--model"])
            .arg(language_fixture(MODEL))
            .arg("--video")
            .arg(file)
            .arg("--out")
            .arg(dir.path().join("x.safetensors"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_video_prompts_as_its_frames_given_as_images_on_frame_lines() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), 320, 240).unwrap();
    let model = language_fixture(MODEL);
    let generate = |media: &[&str], prompt: &str, logits: &str| {
        let mut command = dvd();
        command
            .args(["generate", "--model"])
            .arg(&model)
            .args(media)
            .args(["--prompt", prompt, "--max-new-tokens", "6", "--json"])
            .arg("--logits-out")
            .arg(dir.path().join(logits));
        let report = json_output(&mut command);
        let logits = std::fs::read(dir.path().join(logits)).unwrap();
        (report, logits)
    };
    let clip_arg = clip.to_str().unwrap();
    let (video, video_logits) = generate(
        &["--video", clip_arg, "--num-frames", "4"],
        "What is shown?",
        "video.safetensors",
    );
    // 96 frames, 4 segments: 11, 35, 59, 82.
    assert_eq!(video["frame_indices"], serde_json::json!([11, 35, 59, 82]));
    let mut images = Vec::new();
    for n in [11, 35, 59, 82] {
        images.push(frame_png(dir.path(), n).display().to_string());
    }
    let mut media = vec!["--max-tiles", "1"];
    for image in &images {
        media.extend(["--image", image.as_str()]);
    }
    let (frames, frames_logits) = generate(
        &media,
        "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\nWhat is shown?",
        "frames.safetensors",
    );
    assert_eq!(video["prompt_tokens"], frames["prompt_tokens"]);
    assert_eq!(video["image_tokens"], frames["image_tokens"]);
    assert_eq!(video["token_ids"], frames["token_ids"]);
    assert!(video_logits == frames_logits, "prefill logits differ");
}
