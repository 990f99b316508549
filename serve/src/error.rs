//! [`StartError`]: what can stop a server's listeners and tasks from starting.

use dvd_proto::tls::TlsError;

/// What can stop a server from starting, whatever its role.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The gRPC listener's TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket or thread could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Work run on a blocking thread while starting (loading a model) panicked.
    #[error("{what} panicked: {message}")]
    Join {
        /// What was running.
        what: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl StartError {
    /// A function turning an I/O error into [`StartError::Io`] with `context`, for `map_err`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
