//! gRPC contracts of dvd, a serving system for InternVL3.5 vision-language
//! models built on decoupled vision-language deployment.
//!
//! Packages, one module each:
//! - [`common::v1`]: sampling parameters, usage, finish reasons and serving
//!   status shared by every API.
//! - [`feature::v1`]: control-plane description of the feature data plane
//!   (where features go, and a mirror of the binary frame header). The
//!   features themselves travel over TCP or QUIC, not gRPC.
//! - [`vision::v1`]: `VisionService`, served by vision servers.
//! - [`language::v1`]: `LanguageService`, served by language servers.
//! - [`api::v1`]: `InferenceService`, the public API of the gateway.
//!
//! [`limits`] holds the message size and HTTP/2 settings every server and
//! client must use, because images travel inside gRPC messages. [`tls`] is the
//! mutual TLS between the gateway and the servers.

pub mod limits;
pub mod tls;

/// Shared message types (`dvd.common.v1`).
pub mod common {
    /// Version 1 of `dvd.common`.
    pub mod v1 {
        tonic::include_proto!("dvd.common.v1");
    }
}

/// Feature data plane description (`dvd.feature.v1`).
pub mod feature {
    /// Version 1 of `dvd.feature`.
    pub mod v1 {
        tonic::include_proto!("dvd.feature.v1");
    }
}

/// Vision server API (`dvd.vision.v1`).
pub mod vision {
    /// Version 1 of `dvd.vision`.
    pub mod v1 {
        tonic::include_proto!("dvd.vision.v1");
    }
}

/// Language server API (`dvd.language.v1`).
pub mod language {
    /// Version 1 of `dvd.language`.
    pub mod v1 {
        tonic::include_proto!("dvd.language.v1");
    }
}

/// Public client API served by the gateway (`dvd.api.v1`).
pub mod api {
    /// Version 1 of `dvd.api`.
    pub mod v1 {
        tonic::include_proto!("dvd.api.v1");
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every dvd package, for a
/// gRPC reflection service (for example `tonic-reflection`'s
/// `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dvd_descriptor");

#[cfg(test)]
mod tests {
    use super::*;

    /// Just enough of `google.protobuf.FileDescriptorSet` to read package names.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }

    /// Just enough of `google.protobuf.FileDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct File {
        #[prost(string, optional, tag = "2")]
        package: Option<String>,
    }

    #[test]
    fn bytes_fields_are_bytes() {
        use vision::v1::{ImageInput, image_input};
        // Compiles only if proto `bytes` maps to `bytes::Bytes`.
        let image = ImageInput {
            source: Some(image_input::Source::Data(bytes::Bytes::from_static(b"x"))),
            content_hash: Some(bytes::Bytes::from_static(b"h")),
            video: None,
        };
        let planned = vision::v1::ImagePlanned {
            content_hash: bytes::Bytes::new(),
            ..Default::default()
        };
        let api_image = api::v1::Image {
            source: Some(api::v1::image::Source::Data(bytes::Bytes::from_static(
                b"y",
            ))),
            max_tiles: None,
        };
        assert!(
            matches!(image.source, Some(image_input::Source::Data(ref d)) if d.as_ref() == b"x")
        );
        assert!(planned.content_hash.is_empty());
        assert!(api_image.source.is_some());
    }

    #[test]
    fn file_descriptor_set_holds_every_package() {
        use prost::Message;
        let set = FileSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let packages: Vec<String> = set.file.into_iter().filter_map(|f| f.package).collect();
        for package in [
            "dvd.common.v1",
            "dvd.feature.v1",
            "dvd.vision.v1",
            "dvd.language.v1",
            "dvd.api.v1",
        ] {
            assert!(packages.iter().any(|p| p == package), "{package} missing");
        }
    }

    #[test]
    fn enums_strip_their_prefix() {
        assert_eq!(feature::v1::Transport::Quic as i32, 2);
        assert_eq!(feature::v1::FrameKind::Abort as i32, 3);
        assert_eq!(
            common::v1::FinishReason::Length.as_str_name(),
            "FINISH_REASON_LENGTH"
        );
    }
}
