//! `dvd encode --video`: the model card's frames of a clip, each encoded exactly as the same
//! frame given as an image, with the frame numbers written beside the features; bad video is a
//! clear error. `dvd generate --video`: the frames prompt as images on `FrameN:` lines, and the
//! greedy tokens of a small InternVL equal transformers'. `dvd up`: a `video_url` is answered as
//! `dvd generate --video --wire-features` answers, and so does `dvd chat --video`; bad video is
//! a 400 for that request alone, and a deployment without FFmpeg refuses videos clearly while
//! serving images.

use std::path::{Path, PathBuf};

use dvd_vision_server::video::clips::{audio_only, ffmpeg_make, h264_clip};

use crate::common::{
    REFERENCE_LOGITS_TOLERANCE, Up, assert_success, data_url, dvd, generate_json, http, image,
    json_output, language_fixture, max_diff, read_f32, read_i64, video_fixture,
};

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

#[test]
fn video_greedy_tokens_match_transformers() {
    // The HF-layout checkpoint, prompted through its chat template as transformers'
    // InternVLProcessor does: the template's `<video>\n` becomes `Frame1: <img>..</img>\n...
    // Frame8: <img>..</img>` before the question (tools/make_video_fixtures.py). The committed
    // clip's 8 frames, one tile each; the question is the one the fixture script kept for its
    // greedy margin.
    let model = language_fixture("internvl-dense-hf");
    let reference = video_fixture("generate_reference.safetensors");
    let question =
        String::from_utf8(tensor(&std::fs::read(&reference).unwrap(), "question").1).unwrap();
    let clip = video_fixture("clip.mp4");
    let (report, logits) = generate_json(
        &[
            "--video",
            clip.to_str().unwrap(),
            "--num-frames",
            "8",
            "--prompt",
            question.as_str(),
            "--max-new-tokens",
            "16",
        ],
        &model,
    );
    // The frames transformers saw (PyAV, the model card's get_index).
    let frames = read_i64(&video_fixture("reference.safetensors"), "frame_indices");
    assert_eq!(report["frame_indices"], serde_json::json!(frames));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let per_tile = config["image_seq_length"].as_u64().unwrap();
    assert_eq!(report["image_tokens"], serde_json::json!(vec![per_tile; 8]));
    assert_eq!(
        report["prompt_tokens"],
        read_i64(&reference, "video_ids").len()
    );
    let tokens: Vec<i64> = serde_json::from_value(report["token_ids"].clone()).unwrap();
    assert_eq!(tokens, read_i64(&reference, "video_greedy"));
    assert_eq!(report["finish_reason"], "length");
    let diff = max_diff(&logits, &read_f32(&reference, "video_logits").1);
    assert!(
        diff <= REFERENCE_LOGITS_TOLERANCE,
        "prefill logits differ by {diff}"
    );
}

/// A chat completion body asking `question` about `video_url` (`num_frames` frames), greedy.
fn video_chat(video_url: serde_json::Value, question: &str, max_tokens: u32) -> Vec<u8> {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": video_url},
            {"type": "text", "text": question},
        ]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
    .to_string()
    .into_bytes()
}

fn mp4_url(bytes: &[u8]) -> String {
    data_url("video/mp4", bytes)
}

#[test]
fn dvd_up_answers_a_video_url_as_dvd_generate_does_and_refuses_bad_video_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), 160, 120).unwrap();
    let model = language_fixture(MODEL);
    let question = "What happens in the video?";
    let generated = json_output(
        dvd()
            .args(["generate", "--wire-features", "--json", "--model"])
            .arg(&model)
            .arg("--video")
            .arg(&clip)
            .args(["--num-frames", "4", "--prompt", question])
            .args(["--max-new-tokens", "12"]),
    );
    let up = Up::start(&["--model", model.to_str().unwrap(), "--kv-cache-mib", "64"]);
    let url = mp4_url(&std::fs::read(&clip).unwrap());
    let ask = |video_url: serde_json::Value| {
        http(
            &up.http,
            "POST",
            "/v1/chat/completions",
            &video_chat(video_url, question, 12),
        )
    };
    let answer = ask(serde_json::json!({"url": url, "num_frames": 4}));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    assert_eq!(answer["usage"]["prompt_tokens"], generated["prompt_tokens"]);
    assert_eq!(
        answer["choices"][0]["message"]["content"], generated["text"],
        "the gateway's answer and dvd generate's"
    );

    // `dvd chat --video` says the same.
    let out = dvd()
        .args(["chat", "--url", &format!("http://{}", up.http), "--video"])
        .arg(&clip)
        .args([
            "--num-frames",
            "4",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            question,
        ])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        generated["text"].as_str().unwrap()
    );

    // The public gRPC API, an image and the video mixed in one message.
    let mixed = json_output(
        dvd()
            .args(["generate", "--wire-features", "--json", "--model"])
            .arg(&model)
            .arg("--image")
            .arg(image())
            .arg("--video")
            .arg(&clip)
            .args(["--num-frames", "4", "--prompt", question])
            .args(["--max-new-tokens", "12"]),
    );
    let (text, usage) = grpc_chat(&up, image(), &clip, question);
    assert_eq!(text, mixed["text"].as_str().unwrap());
    assert_eq!(
        u64::from(usage.prompt_tokens),
        mixed["prompt_tokens"].as_u64().unwrap()
    );

    // Bad requests: a 400 each, naming what is wrong.
    let refused = |video_url: serde_json::Value, says: &[&str]| {
        let reply = ask(video_url);
        assert_eq!(reply.status, 400, "{}", reply.body);
        for s in says {
            assert!(reply.body.contains(s), "{s:?} not in {}", reply.body);
        }
    };
    refused(
        serde_json::json!({"url": url, "num_frames": 33}),
        &["num_frames 33", "limit of 32 frames", "max_frames"],
    );
    refused(
        serde_json::json!({"url": mp4_url(&[7u8; 4096])}),
        &["video 0", "not a readable video"],
    );
    let bytes = std::fs::read(&clip).unwrap();
    refused(
        serde_json::json!({"url": mp4_url(&bytes[..bytes.len() / 3])}),
        &["video 0"],
    );
    let audio = std::fs::read(audio_only(dir.path()).unwrap()).unwrap();
    refused(
        serde_json::json!({"url": mp4_url(&audio)}),
        &["no video stream"],
    );
    // Nothing else broke: the video is answered as before.
    let again = ask(serde_json::json!({"url": url, "num_frames": 4}));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.json()["choices"][0]["message"]["content"],
        generated["text"]
    );
}

/// Asks `question` about `image` and then `video` (4 frames) through the gateway's public gRPC
/// API, greedy, 12 tokens; the answer and its usage.
fn grpc_chat(
    up: &Up,
    image: PathBuf,
    video: &Path,
    question: &str,
) -> (String, dvd_proto::common::v1::Usage) {
    use dvd_proto::api::v1::{
        ChatRequest, ContentPart, Image, Message, Video, chat_event, content_part,
    };
    use dvd_proto::limits::{inference_client, tuned_endpoint};
    let part = |part| ContentPart { part: Some(part) };
    let port: u16 = up.http.rsplit_once(':').unwrap().1.parse().unwrap();
    let request = ChatRequest {
        model: MODEL.into(),
        messages: vec![Message {
            role: "user".into(),
            content: vec![
                part(content_part::Part::Image(Image {
                    source: Some(dvd_proto::api::v1::image::Source::Data(
                        std::fs::read(image).unwrap().into(),
                    )),
                    max_tiles: None,
                })),
                part(content_part::Part::Video(Video {
                    source: Some(dvd_proto::api::v1::video::Source::Data(
                        std::fs::read(video).unwrap().into(),
                    )),
                    num_frames: Some(4),
                    max_tiles: None,
                })),
                part(content_part::Part::Text(question.into())),
            ],
        }],
        sampling: Some(dvd_proto::common::v1::SamplingParams {
            max_tokens: 12,
            ..Default::default()
        }),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let address = format!("127.0.0.1:{}", port + 1);
        let channel = tuned_endpoint(&address).unwrap().connect().await.unwrap();
        let mut stream = inference_client(channel)
            .chat(request)
            .await
            .unwrap()
            .into_inner();
        let (mut text, mut usage) = (String::new(), None);
        while let Some(event) = stream.message().await.unwrap() {
            match event.event.unwrap() {
                chat_event::Event::Delta(d) => text.push_str(&d.content),
                chat_event::Event::Done(d) => usage = d.usage,
            }
        }
        (text, usage.unwrap())
    })
}

#[test]
fn a_deployment_without_ffmpeg_refuses_videos_clearly_and_serves_images() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), 96, 72).unwrap();
    let model = language_fixture(MODEL);
    let up = Up::start_with_env(
        &["--model", model.to_str().unwrap(), "--kv-cache-mib", "64"],
        &[("DVD_FFMPEG", "/nonexistent/ffmpeg")],
    );
    let url = mp4_url(&std::fs::read(&clip).unwrap());
    let reply = http(
        &up.http,
        "POST",
        "/v1/chat/completions",
        &video_chat(serde_json::json!({"url": url}), "What happens?", 4),
    );
    assert!(reply.status >= 500, "{} {}", reply.status, reply.body);
    assert!(
        reply.body.contains("video decoding is not available") && reply.body.contains("FFmpeg"),
        "{}",
        reply.body
    );
    let png = data_url("image/png", &std::fs::read(image()).unwrap());
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png}},
            {"type": "text", "text": "What is shown?"},
        ]}],
        "max_tokens": 4,
    });
    let ok = http(
        &up.http,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}
