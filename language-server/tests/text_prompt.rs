#![allow(clippy::unwrap_used)]
//! The InternVL3.5 prompt format (custom `internvl2_5` template): exact strings, the default
//! and thinking system prompts, image/video prefixes, role errors, and think/answer splitting.

use dvd_language_server::text::{
    ChatMessage, ContentPart, DEFAULT_SYSTEM_MESSAGE, InternVlPromptOptions, R1_SYSTEM_PROMPT,
    TextError, media_prefix, render_internvl, split_thinking,
};

fn render(messages: &[ChatMessage]) -> String {
    render_internvl(messages, &InternVlPromptOptions::default()).unwrap()
}

#[test]
fn system_prompts_are_the_exact_published_texts() {
    assert_eq!(
        DEFAULT_SYSTEM_MESSAGE.as_bytes(),
        "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。".as_bytes()
    );
    let paragraphs: Vec<&str> = R1_SYSTEM_PROMPT.split("\n\n").collect();
    assert_eq!(paragraphs.len(), 4);
    assert_eq!(
        paragraphs[0],
        "You are an AI assistant that rigorously follows this response protocol:"
    );
    assert!(paragraphs[1].starts_with("1. First, conduct a detailed analysis of the question."));
    assert!(
        paragraphs[1]
            .ends_with("Enclose this entire thinking process within <think> and </think> tags.")
    );
    assert!(paragraphs[2].starts_with("2. After the thinking section, provide a clear, concise, and direct answer to the user's question."));
    assert!(paragraphs[2].ends_with("Separate the answer from the think section with a newline."));
    assert_eq!(
        paragraphs[3],
        "Ensure that the thinking process is thorough but remains focused on the query. The final answer should be standalone and not reference the thinking section."
    );
    assert_eq!(R1_SYSTEM_PROMPT.trim(), R1_SYSTEM_PROMPT);
    assert_eq!(R1_SYSTEM_PROMPT.len(), 608);
    assert_eq!(
        R1_SYSTEM_PROMPT,
        "You are an AI assistant that rigorously follows this response protocol:\n\n1. First, conduct a detailed analysis of the question. Consider different angles, potential solutions, and reason through the problem step-by-step. Enclose this entire thinking process within <think> and </think> tags.\n\n2. After the thinking section, provide a clear, concise, and direct answer to the user's question. Separate the answer from the think section with a newline.\n\nEnsure that the thinking process is thorough but remains focused on the query. The final answer should be standalone and not reference the thinking section."
    );
}

#[test]
fn single_question_gets_the_default_system_message() {
    assert_eq!(
        render(&[ChatMessage::user("Hello")]),
        format!(
            "<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        )
    );
}

#[test]
fn thinking_mode_uses_the_r1_prompt_unless_a_system_message_is_given() {
    let thinking = InternVlPromptOptions {
        thinking: true,
        ..Default::default()
    };
    assert_eq!(
        render_internvl(&[ChatMessage::user("Q")], &thinking).unwrap(),
        format!(
            "<|im_start|>system\n{R1_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    let own = [ChatMessage::system("Be terse."), ChatMessage::user("Q")];
    assert_eq!(
        render_internvl(&own, &thinking).unwrap(),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn multi_turn_history_and_no_generation_prompt() {
    let messages = [
        ChatMessage::system("S"),
        ChatMessage::parts(
            "user",
            vec![ContentPart::Image, ContentPart::Text("What is it?".into())],
        ),
        ChatMessage::assistant("A cat."),
        ChatMessage::user("Color?"),
    ];
    let want = "<|im_start|>system\nS<|im_end|>\n\
                <|im_start|>user\n<image>\nWhat is it?<|im_end|>\n\
                <|im_start|>assistant\nA cat.<|im_end|>\n\
                <|im_start|>user\nColor?<|im_end|>\n";
    let options = InternVlPromptOptions {
        add_generation_prompt: false,
        ..Default::default()
    };
    assert_eq!(render_internvl(&messages, &options).unwrap(), want);
    assert_eq!(render(&messages), format!("{want}<|im_start|>assistant\n"));
}

#[test]
fn image_and_video_prefixes() {
    assert_eq!(media_prefix(0, &[]), "");
    assert_eq!(media_prefix(1, &[]), "<image>\n");
    assert_eq!(
        media_prefix(3, &[]),
        "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\n"
    );
    assert_eq!(
        media_prefix(0, &[3]),
        "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\n"
    );
    assert_eq!(
        media_prefix(1, &[2]),
        "<image>\nFrame1: <image>\nFrame2: <image>\n"
    );

    let two = ChatMessage::parts(
        "user",
        vec![
            ContentPart::Text("Compare ".into()),
            ContentPart::Image,
            ContentPart::Image,
            ContentPart::Text("them.".into()),
        ],
    );
    assert!(render(&[two]).contains(
        "<|im_start|>user\nImage-1: <image>\nImage-2: <image>\nCompare them.<|im_end|>\n"
    ));
    let video = ChatMessage::parts(
        "user",
        vec![
            ContentPart::Video { frames: 2 },
            ContentPart::Text("What happens?".into()),
        ],
    );
    assert!(
        render(&[video]).contains(
            "<|im_start|>user\nFrame1: <image>\nFrame2: <image>\nWhat happens?<|im_end|>\n"
        )
    );
}

#[test]
fn text_that_places_its_own_placeholders_is_kept() {
    let m = ChatMessage::parts(
        "user",
        vec![
            ContentPart::Image,
            ContentPart::Image,
            ContentPart::Text("First <image> then <image>: same?".into()),
        ],
    );
    assert!(render(&[m]).contains("<|im_start|>user\nFirst <image> then <image>: same?<|im_end|>"));
    // A plain-text question with images attached elsewhere gets no prefix.
    assert!(render(&[ChatMessage::user("Hi")]).contains("user\nHi<|im_end|>"));
}

#[test]
fn bad_conversations_are_typed_errors() {
    let options = InternVlPromptOptions::default();
    assert!(matches!(
        render_internvl(&[], &options),
        Err(TextError::EmptyConversation)
    ));
    assert!(matches!(
        render_internvl(
            &[ChatMessage::user("a"), ChatMessage::system("s")],
            &options
        ),
        Err(TextError::MisplacedSystem { index: 1 })
    ));
    assert!(matches!(
        render_internvl(&[ChatMessage::system("s"), ChatMessage::text("tool", "x")], &options),
        Err(TextError::UnknownRole { index: 1, role }) if role == "tool"
    ));
    assert!(matches!(
        render_internvl(
            &[ChatMessage::parts("system", vec![ContentPart::Image])],
            &options
        ),
        Err(TextError::SystemWithMedia)
    ));
}

#[test]
fn thinking_and_answer_split() {
    let s = split_thinking("<think>\nLet me see.\n2+2=4\n</think>\n\nThe answer is 4.");
    assert_eq!(s.thinking, Some("Let me see.\n2+2=4"));
    assert_eq!(s.answer, "The answer is 4.");

    // Opening tag already in the prompt.
    let s = split_thinking("reasoning</think>answer");
    assert_eq!(s.thinking, Some("reasoning"));
    assert_eq!(s.answer, "answer");

    // Stopped while thinking.
    let s = split_thinking("<think>\nhalf a thou");
    assert_eq!(s.thinking, Some("half a thou"));
    assert_eq!(s.answer, "");

    // No thinking section at all.
    let s = split_thinking("Just an answer.");
    assert_eq!(s.thinking, None);
    assert_eq!(s.answer, "Just an answer.");

    // Only the first </think> splits; empty thinking is Some("").
    let s = split_thinking("<think></think>\nA </think> B");
    assert_eq!(s.thinking, Some(""));
    assert_eq!(s.answer, "A </think> B");
}
