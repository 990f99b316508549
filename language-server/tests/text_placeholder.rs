#![allow(clippy::unwrap_used)]
//! Image placeholder expansion with per-image feature-token counts (256 per tile, 64 for tiles
//! the ViR router compressed), the count check, raw prompts, HF `<IMG_CONTEXT>` placeholders, and
//! encoding without materialising the expanded text.

use dvd_language_server::text::{
    ChatMessage, ContentPart, IMAGE_PLACEHOLDER, IMG_CONTEXT, ImageTokenIds, InternVlPromptOptions,
    TextError, Tokenizer, count_placeholders, encode_with_images, expand_image_placeholders,
    image_token_count, render_internvl,
};

use crate::common::{text_fixture, text_tokenizer as tokenizer};

fn block(n: usize) -> String {
    format!("<img>{}</img>", "<IMG_CONTEXT>".repeat(n))
}

#[test]
fn each_placeholder_gets_its_images_token_count() {
    // Image 1: 3 full tiles + thumbnail; image 2: 2 tiles, one compressed by ViR.
    let first = image_token_count(&[256, 256, 256, 256]);
    let second = image_token_count(&[256, 64]);
    assert_eq!((first, second), (1024, 320));
    let prompt = "Image-1: <image>\nImage-2: <image>\nCompare.";
    let out = expand_image_placeholders(prompt, IMAGE_PLACEHOLDER, &[first, second]).unwrap();
    assert_eq!(
        out,
        format!(
            "Image-1: {}\nImage-2: {}\nCompare.",
            block(1024),
            block(320)
        )
    );
    assert_eq!(out.matches(IMG_CONTEXT).count(), 1344);
}

#[test]
fn compressed_tiles_only() {
    let n = image_token_count(&[64, 64, 64]);
    let out = expand_image_placeholders("<image>\nx", IMAGE_PLACEHOLDER, &[n]).unwrap();
    assert_eq!(out, format!("{}\nx", block(192)));
}

#[test]
fn placeholder_count_must_match_image_count() {
    for (prompt, images) in [
        ("<image> <image>", vec![256]),
        ("<image>", vec![]),
        ("no images", vec![256]),
        ("<image>", vec![256, 256]),
    ] {
        match expand_image_placeholders(prompt, IMAGE_PLACEHOLDER, &images) {
            Err(TextError::PlaceholderMismatch {
                placeholders,
                images: n,
                ..
            }) => {
                assert_eq!(placeholders, count_placeholders(prompt, IMAGE_PLACEHOLDER));
                assert_eq!(n, images.len());
            }
            other => panic!("{prompt:?}: {other:?}"),
        }
    }
    let tok = tokenizer();
    let ids = ImageTokenIds::from_tokenizer(&tok).unwrap();
    assert!(matches!(
        encode_with_images(&tok, ids, "<image>", IMAGE_PLACEHOLDER, &[]),
        Err(TextError::PlaceholderMismatch { .. })
    ));
}

#[test]
fn raw_prompts_are_kept_verbatim_apart_from_placeholders() {
    let raw = "  <|im_start|>user\nraw <image> text\n\n<|im_end|>  ";
    assert_eq!(
        expand_image_placeholders(raw, IMAGE_PLACEHOLDER, &[2]).unwrap(),
        format!("  <|im_start|>user\nraw {} text\n\n<|im_end|>  ", block(2))
    );
    assert_eq!(
        expand_image_placeholders("no images", IMAGE_PLACEHOLDER, &[]).unwrap(),
        "no images"
    );
}

#[test]
fn hf_templates_use_img_context_as_the_placeholder() {
    // The expansion itself contains <IMG_CONTEXT>: replacing left to right in one pass.
    let out =
        expand_image_placeholders("a<IMG_CONTEXT>\nb<IMG_CONTEXT>", IMG_CONTEXT, &[2, 1]).unwrap();
    assert_eq!(out, format!("a{}\nb{}", block(2), block(1)));
}

#[test]
fn encoding_with_images_equals_encoding_the_expanded_prompt() {
    let tok = tokenizer();
    let ids = ImageTokenIds::from_tokenizer(&tok).unwrap();
    assert_eq!(ids.context, tok.token_id("<IMG_CONTEXT>").unwrap());
    let conversation = [
        ChatMessage::parts(
            "user",
            vec![
                ContentPart::Image,
                ContentPart::Image,
                ContentPart::Text("Describe 你好 🙂".into()),
            ],
        ),
        ChatMessage::assistant("ok"),
        ChatMessage::parts(
            "user",
            vec![
                ContentPart::Video { frames: 2 },
                ContentPart::Text("and?".into()),
            ],
        ),
    ];
    let prompt = render_internvl(&conversation, &InternVlPromptOptions::default()).unwrap();
    let counts = [1024, 320, 256, 64];
    let expanded = expand_image_placeholders(&prompt, IMAGE_PLACEHOLDER, &counts).unwrap();
    let direct = encode_with_images(&tok, ids, &prompt, IMAGE_PLACEHOLDER, &counts).unwrap();
    assert_eq!(direct, tok.encode(&expanded).unwrap());
    assert_eq!(
        direct.iter().filter(|&&t| t == ids.context).count(),
        counts.iter().sum::<usize>()
    );
    for prompt in ["<image>", "x<image>", "<image>y", "<image><image>"] {
        let n = count_placeholders(prompt, IMAGE_PLACEHOLDER);
        let counts = vec![3; n];
        assert_eq!(
            encode_with_images(&tok, ids, prompt, IMAGE_PLACEHOLDER, &counts).unwrap(),
            tok.encode(&expand_image_placeholders(prompt, IMAGE_PLACEHOLDER, &counts).unwrap())
                .unwrap(),
            "{prompt:?}"
        );
    }
}

#[test]
fn missing_image_tokens_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let json = std::fs::read_to_string(text_fixture("tokenizer.json"))
        .unwrap()
        .replace("\"<img>\"", "\"<image_start>\"");
    std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(matches!(
        ImageTokenIds::from_tokenizer(&tok),
        Err(TextError::UnknownToken(t)) if t == "<img>"
    ));
}
