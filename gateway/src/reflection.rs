//! gRPC server reflection (v1 and v1alpha, as `grpcurl` and Postman ask) on the gateway's public
//! API: `dvd.api.v1.InferenceService` and the files it is written in, without the internal
//! vision, language and feature contracts.

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tonic::service::Routes;

/// The one service reflection lists.
pub const PUBLIC_SERVICE: &str = "dvd.api.v1.InferenceService";

/// What went wrong building the reflection service.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The compiled-in descriptor set does not decode.
    #[error("the compiled-in file descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The public API's file is not in it.
    #[error("no file declares {PUBLIC_SERVICE} in the compiled-in descriptor set")]
    NoPublicService,
    /// tonic-reflection refused the set.
    #[error("building gRPC reflection: {0}")]
    Build(#[from] tonic_reflection::server::Error),
}

/// `routes` with reflection services added for the public API.
pub fn with_reflection(routes: Routes) -> Result<Routes, ReflectionError> {
    let public = public_files()?;
    let v1 = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(public.clone())
        .with_service_name(PUBLIC_SERVICE)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(public)
        .with_service_name(PUBLIC_SERVICE)
        .build_v1alpha()?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// The file declaring [`PUBLIC_SERVICE`] and every file it imports, transitively.
fn public_files() -> Result<FileDescriptorSet, ReflectionError> {
    let all = FileDescriptorSet::decode(dvd_proto::FILE_DESCRIPTOR_SET)?;
    let (package, service) = PUBLIC_SERVICE
        .rsplit_once('.')
        .ok_or(ReflectionError::NoPublicService)?;
    let root = all
        .file
        .iter()
        .find(|f| f.package() == package && f.service.iter().any(|s| s.name() == service))
        .ok_or(ReflectionError::NoPublicService)?;
    let mut wanted = vec![root.name().to_string()];
    let mut kept: Vec<FileDescriptorProto> = Vec::new();
    while let Some(name) = wanted.pop() {
        if kept.iter().any(|f| f.name() == name) {
            continue;
        }
        // Imports outside the set (google/protobuf/*) are the reflection client's own.
        if let Some(file) = all.file.iter().find(|f| f.name() == name) {
            wanted.extend(file.dependency.iter().cloned());
            kept.push(file.clone());
        }
    }
    Ok(FileDescriptorSet { file: kept })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The public API's file and its imports, none of the internal packages.
    #[test]
    fn only_the_public_api_is_reflected() {
        let files = public_files().unwrap();
        let packages: Vec<&str> = files.file.iter().map(|f| f.package()).collect();
        assert!(packages.contains(&"dvd.api.v1"), "{packages:?}");
        for internal in ["dvd.vision.v1", "dvd.language.v1", "dvd.feature.v1"] {
            assert!(!packages.contains(&internal), "{packages:?}");
        }
        for file in &files.file {
            for import in &file.dependency {
                let inside = files.file.iter().any(|f| f.name() == import);
                assert!(inside || import.starts_with("google/protobuf/"), "{import}");
            }
        }
        assert!(with_reflection(Routes::default()).is_ok());
    }
}
