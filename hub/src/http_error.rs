//! The one place that turns failures into HTTP answers: a status and a JSON
//! body `{"error": <stable code>, "message": <for people>, "parameter"?: …}`.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::configuration::ConfigError;
use crate::store::StoreError;

/// An HTTP error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// A stable code for programs: `bad_parameter`, `unauthorized`, …
    #[schema(value_type = String)]
    error: &'static str,
    /// What went wrong, for people.
    message: String,
    /// The query parameter, body field or header at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<String>,
}

impl ApiError {
    /// 400 for a query parameter, naming it.
    pub fn bad_parameter(parameter: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_parameter",
            message: message.into(),
            parameter: Some(parameter.to_owned()),
        }
    }

    /// 400 for a field of a JSON body, naming it.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_field",
            message: message.into(),
            parameter: Some(field.to_owned()),
        }
    }

    /// 401 with the reason.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "unauthorized",
            message: message.into(),
            parameter: None,
        }
    }

    /// Any other status, with a stable code and a message.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            parameter: None,
        }
    }

    /// A JSON body that could not be taken: 408 `body_timeout` when it did
    /// not arrive in time ([`BodyDeadline`]), 413 past the body limit, 415
    /// without a JSON content type, and 400 `bad_body` for anything else
    /// that is not the request the handler expects.
    pub fn from_json_rejection(rejection: JsonRejection) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
        while let Some(error) = source {
            if let Some(deadline) = error.downcast_ref::<BodyDeadline>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    deadline.to_string(),
                );
            }
            source = error.source();
        }
        let status = match rejection.status() {
            status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => status,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "bad_body", rejection.body_text())
    }
}

/// A request body did not arrive whole within its deadline (the listener
/// gives every body the header deadline).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyDeadline(pub Duration);

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "storage failed while answering a request");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the hub cannot read its storage right now",
        )
    }
}

/// A configuration change refused: 400 naming where, 412 for a version
/// that is not the stored one, 503 when it could not be stored.
impl From<ConfigError> for ApiError {
    fn from(err: ConfigError) -> Self {
        let message = err.to_string();
        match err {
            ConfigError::Refused(refused) => ApiError::bad_field(&refused.path, message),
            ConfigError::Conflict { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "version_mismatch", message)
            }
            ConfigError::Busy => ApiError::new(StatusCode::CONFLICT, "busy", message),
            ConfigError::Store(err) => err.into(),
            ConfigError::Write(_) | ConfigError::Stream(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}
