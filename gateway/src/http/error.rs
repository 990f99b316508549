//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! matching status, `Retry-After` on 429, and the mapping of axum's body rejections.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::GatewayError;

/// An error as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<Duration>,
}

/// Wire form of an error: `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 about one request field (`param`, in OpenAI's dotted/indexed form).
    pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..GatewayError::InvalidRequest(message.into()).into()
        }
    }

    /// A request body that could not be read or parsed as the expected JSON: a 400 when the
    /// JSON is wrong, else the status only HTTP has (413, 415...).
    pub(crate) fn from_rejection(rejection: JsonRejection, max_body_bytes: usize) -> Self {
        let invalid = "invalid_request_error";
        match rejection {
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                GatewayError::InvalidRequest(rejection.body_text()).into()
            }
            JsonRejection::MissingJsonContentType(e) => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, invalid, e.body_text())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self {
                    code: Some("request_too_large"),
                    ..Self::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        invalid,
                        format!(
                            "the request body is larger than the limit of {max_body_bytes} bytes"
                        ),
                    )
                }
            }
            other => Self::new(other.status(), invalid, other.body_text()),
        }
    }

    /// 404 for a path no route serves.
    pub(crate) fn no_route(method: &Method, uri: &Uri) -> Self {
        Self {
            code: Some("unknown_url"),
            ..GatewayError::NotFound(format!("no route for {method} {}", uri.path())).into()
        }
    }

    /// 405 for a known path asked with the wrong method.
    pub(crate) fn method_not_allowed(method: &Method, uri: &Uri) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("method {method} is not allowed on {}", uri.path()),
        )
    }

    /// The JSON body, also sent as the last event of a failed stream.
    pub(crate) fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            code: e.openai_code(),
            retry_after: e.retry_after(),
            ..Self::new(status, e.openai_type(), e.to_string())
        }
    }
}

/// `Retry-After` in whole seconds, rounded up.
fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3001)), 4);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    }
}
