//! Errors as `application/problem+json` (RFC 9457): a stable `code` a client can match on, the
//! HTTP status, a `title` for the code, the `detail` (the message the CLI gives for the same
//! mistake) and, when one field is at fault, its name in `field`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use poolbill_engine::EngineError;
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The stable codes, each with its status and title.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The body is not a valid command (or advance): JSON, a field, a value.
    InvalidCommand,
    /// A query parameter or path segment is not valid.
    InvalidParameter,
    MissingIdempotencyKey,
    /// The key was used before for another command (another body or instant): nothing done.
    IdempotencyKeyReused,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    BodyTooLarge,
    /// Not written because an earlier write of the same group commit failed: safe to retry.
    NotWritten,
    /// The write failed at or after its commit: it may or may not be in the log. A retry with
    /// the same key settles it (its first answer if it was written, done now if not).
    OutcomeUnknown,
    /// The engine has stopped (after a write failure it could not recover from).
    EngineStopped,
    /// The store failed while reading or writing.
    StoreFailed,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidCommand => "invalid-command",
            Code::InvalidParameter => "invalid-parameter",
            Code::MissingIdempotencyKey => "missing-idempotency-key",
            Code::IdempotencyKeyReused => "idempotency-key-reused",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not-found",
            Code::MethodNotAllowed => "method-not-allowed",
            Code::BodyTooLarge => "body-too-large",
            Code::NotWritten => "not-written",
            Code::OutcomeUnknown => "outcome-unknown",
            Code::EngineStopped => "engine-stopped",
            Code::StoreFailed => "store-failed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidCommand | Code::InvalidParameter | Code::MissingIdempotencyKey => StatusCode::BAD_REQUEST,
            Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::NotWritten | Code::OutcomeUnknown | Code::EngineStopped => StatusCode::SERVICE_UNAVAILABLE,
            Code::StoreFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Code::InvalidCommand => "The body is not a valid command",
            Code::InvalidParameter => "A parameter is not valid",
            Code::MissingIdempotencyKey => "An Idempotency-Key header (the command id) is required",
            Code::IdempotencyKeyReused => "The idempotency key was already used for another command",
            Code::Unauthorized => "A valid bearer token is required",
            Code::Forbidden => "The token does not allow this",
            Code::NotFound => "No such thing",
            Code::MethodNotAllowed => "The method is not allowed here",
            Code::BodyTooLarge => "The request body is too large",
            Code::NotWritten => "Not written; safe to retry with the same key",
            Code::OutcomeUnknown => "Outcome unknown; retry with the same key to learn it",
            Code::EngineStopped => "The engine has stopped",
            Code::StoreFailed => "The store failed",
        }
    }
}

/// A problem: its code, what is wrong, and the field at fault (small: handlers return it in
/// their `Err`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub code: Code,
    /// What is wrong, as the CLI words it.
    pub detail: String,
    pub field: Option<String>,
}

/// The problem document as sent.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// `urn:poolbill:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What is wrong, as the CLI words it.
    pub detail: String,
    /// The stable code: what a client matches on.
    pub code: String,
    /// The field, parameter or header at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `"unknown"` when the command's write failed at or after its commit (code
    /// `outcome-unknown`), as `poolbill serve` answers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        Problem { code, detail: detail.into(), field: None }
    }

    pub fn at(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            kind: format!("urn:poolbill:problem:{}", self.code.as_str()),
            title: self.code.title().to_string(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_string(),
            field: self.field.clone(),
            outcome: (self.code == Code::OutcomeUnknown).then(|| "unknown".to_string()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_string(&self.body()).expect("a problem serialises");
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The one place an engine error becomes an HTTP answer.
///
/// A write that failed at or after its commit is a 503 whose body carries `"outcome": "unknown"`
/// (a retry with the same Idempotency-Key settles it); "not written" is a promise (issue 12).
pub fn engine_problem(error: &EngineError) -> Problem {
    let detail = one_line(error);
    match error {
        EngineError::IdReused { .. } => Problem::new(Code::IdempotencyKeyReused, detail).at("Idempotency-Key"),
        EngineError::Aborted(_) => Problem::new(Code::NotWritten, detail),
        EngineError::OutcomeUnknown(_) => Problem::new(Code::OutcomeUnknown, detail),
        EngineError::Closed | EngineError::Stopped(_) => Problem::new(Code::EngineStopped, detail),
        EngineError::Store(_) | EngineError::Replay(_) => Problem::new(Code::StoreFailed, detail),
    }
}

/// An error and its causes on one line (`a: b: c`), as `poolbill serve` answers them.
pub use poolbill_store::one_line;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_error_has_its_code_and_status() {
        let reused = EngineError::IdReused { id: "k".into(), first: "a".into(), now: "b".into() };
        let p = engine_problem(&reused);
        assert_eq!((p.code.as_str(), p.status().as_u16(), p.field.as_deref()), ("idempotency-key-reused", 422, Some("Idempotency-Key")));
        assert!(p.detail.contains("already used for another command"), "{}", p.detail);
        assert_eq!(engine_problem(&EngineError::Aborted("x".into())).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(engine_problem(&EngineError::Closed).code, Code::EngineStopped);
        let unknown = engine_problem(&EngineError::OutcomeUnknown("the flush failed".into()));
        assert_eq!((unknown.code.as_str(), unknown.status().as_u16()), ("outcome-unknown", 503));
        assert_eq!(serde_json::to_value(unknown.body()).unwrap()["outcome"], "unknown");
        assert!(serde_json::to_value(engine_problem(&EngineError::Aborted("x".into())).body()).unwrap().get("outcome").is_none());
    }

    #[test]
    fn a_problem_is_rfc_9457_json() {
        let value = serde_json::to_value(Problem::new(Code::Forbidden, "nope").body()).unwrap();
        assert_eq!(value["type"], "urn:poolbill:problem:forbidden");
        assert_eq!(value["status"], 403);
        assert!(value.get("field").is_none());
    }
}
