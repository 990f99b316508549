//! Chat messages as the prompt builders see them.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// One part of a message's content (OpenAI / transformers content-list style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    /// Text (`{"type": "text", "text": ..}`).
    Text(String),
    /// An image (`{"type": "image"}`); its pixels travel separately.
    Image,
    /// A video given as `frames` sampled frames (`{"type": "video"}`); the InternVL format writes
    /// one `FrameN: <image>` line per frame.
    Video {
        /// Number of frames.
        frames: usize,
    },
}

/// A message's content: a plain string, or a list of parts. Templates see exactly this shape
/// (`message['content'] is string` or a list of `{"type": ..}` dicts), so the shape a client
/// sent is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageContent {
    /// A plain string.
    Text(String),
    /// A list of parts.
    Parts(Vec<ContentPart>),
}

/// A chat message: a role (`system`, `user`, `assistant`, ...) and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (templates may accept more).
    pub role: String,
    /// The content.
    pub content: MessageContent,
}

impl ChatMessage {
    /// A message with string content.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: MessageContent::Text(text.into()),
        }
    }

    /// A message with a list of parts.
    pub fn parts(role: impl Into<String>, parts: Vec<ContentPart>) -> Self {
        Self {
            role: role.into(),
            content: MessageContent::Parts(parts),
        }
    }

    /// A `system` message with string content.
    pub fn system(text: impl Into<String>) -> Self {
        Self::text("system", text)
    }

    /// A `user` message with string content.
    pub fn user(text: impl Into<String>) -> Self {
        Self::text("user", text)
    }

    /// An `assistant` message with string content.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text("assistant", text)
    }

    /// The text parts concatenated (the whole string for string content).
    pub fn text_content(&self) -> String {
        match &self.content {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Number of image parts.
    pub fn image_count(&self) -> usize {
        self.part_iter()
            .filter(|p| matches!(p, ContentPart::Image))
            .count()
    }

    /// Frame counts of the video parts, in order.
    pub fn video_frames(&self) -> Vec<usize> {
        self.part_iter()
            .filter_map(|p| match p {
                ContentPart::Video { frames } => Some(*frames),
                _ => None,
            })
            .collect()
    }

    fn part_iter(&self) -> impl Iterator<Item = &ContentPart> {
        match &self.content {
            MessageContent::Text(_) => [].iter(),
            MessageContent::Parts(parts) => parts.iter(),
        }
    }
}

impl Serialize for ContentPart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContentPart::Text(text) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("type", "text")?;
                map.serialize_entry("text", text)?;
                map.end()
            }
            ContentPart::Image => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("type", "image")?;
                map.end()
            }
            ContentPart::Video { .. } => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("type", "video")?;
                map.end()
            }
        }
    }
}

impl Serialize for MessageContent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MessageContent::Text(text) => serializer.serialize_str(text),
            MessageContent::Parts(parts) => parts.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_the_transformers_shape() {
        let m = ChatMessage::parts(
            "user",
            vec![
                ContentPart::Image,
                ContentPart::Text("hi".into()),
                ContentPart::Video { frames: 2 },
            ],
        );
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":[{"type":"image"},{"type":"text","text":"hi"},{"type":"video"}]}"#
        );
        assert_eq!(m.image_count(), 1);
        assert_eq!(m.video_frames(), vec![2]);
        assert_eq!(m.text_content(), "hi");
        assert_eq!(
            serde_json::to_string(&ChatMessage::user("x")).unwrap(),
            r#"{"role":"user","content":"x"}"#
        );
    }
}
