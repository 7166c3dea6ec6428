//! API errors: every failure a client can cause maps to a deliberate 4xx with
//! a JSON `{"error": "..."}` body; only our own faults are 5xx.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::supervisor::CommandError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(crate::api::ErrorBody { error: self.message })).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        let status = match e {
            CommandError::NoSuchUnit(_) => StatusCode::NOT_FOUND,
            CommandError::Refused { .. } => StatusCode::CONFLICT,
            CommandError::ShuttingDown | CommandError::Gone => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::internal(e)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::internal(format!("{e:#}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::instances::InstanceError> for ApiError {
    fn from(e: crate::instances::InstanceError) -> ApiError {
        use crate::instances::InstanceError::*;
        match e {
            Invalid(m) => ApiError::bad_request(m),
            NotFound(m) => ApiError::not_found(m),
            Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> ApiError {
        // Over the body limit: 413, as HTTP says.
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body too large: {}", e.body_text()));
        }
        // Malformed JSON, a wrong type or an unknown field: the client's to fix.
        ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(format!("bad query: {}", e.body_text()))
    }
}
