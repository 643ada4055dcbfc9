//! RFC 9457 problem details: every error Keel answers over HTTP, from services and
//! from the gateway, is one of these.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An `application/problem+json` response. The details of what went wrong inside go to
/// the log, not here; `detail` says what the caller can act on.
///
/// Handlers return it as their error (`Result<_, Problem>`); it is kept under 128 bytes
/// so such results stay cheap to move (and clippy's `result_large_err` quiet).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem kind (the status's reason phrase by default).
    pub title: String,
    /// The HTTP status code, repeated in the body.
    pub status: u16,
    /// What happened this time, in words the caller can act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub detail: Option<Box<str>>,
    /// A URI naming this occurrence (such as the request path).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub instance: Option<Box<str>>,
    /// The input fields at fault, for validation errors (an extension member).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
    /// Seconds to wait before retrying, sent as `Retry-After` (not in the body).
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

/// One invalid input field: where it is (a JSON pointer such as `/items/0/quantity`,
/// or a header or query parameter name) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProblemField {
    /// Where the field is: a JSON pointer, or a header or query parameter name.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

impl Problem {
    /// A problem with the given status, titled with the status's reason phrase.
    pub fn new(status: StatusCode) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: None,
            instance: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// Sets the `type` URI.
    pub fn with_type(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Sets the `title`.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the `detail`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into().into_boxed_str());
        self
    }

    /// Sets the `instance` URI.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into().into_boxed_str());
        self
    }

    /// Adds an invalid field.
    pub fn with_field(mut self, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        self.errors.push(ProblemField { pointer: pointer.into(), detail: detail.into() });
        self
    }

    /// Sends `Retry-After: seconds` with the response.
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400 naming one invalid field.
    pub fn invalid_field(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        let pointer = pointer.into();
        let detail = detail.into();
        Self::new(StatusCode::BAD_REQUEST)
            .with_detail(format!("{pointer}: {detail}"))
            .with_field(pointer, detail)
    }

    /// 422 naming each field of a well-formed body that is not what the endpoint takes
    /// (missing, of the wrong type or value, unknown, duplicated).
    pub fn invalid_body(errors: Vec<ProblemField>) -> Self {
        let detail = errors
            .iter()
            .map(|e| {
                format!("{} {}", if e.pointer.is_empty() { "body" } else { &e.pointer }, e.detail)
            })
            .collect::<Vec<_>>()
            .join("; ");
        let mut problem = Self::new(StatusCode::UNPROCESSABLE_ENTITY)
            .with_type("https://keel.invalid/problems/validation")
            .with_title("The request body is invalid")
            .with_detail(detail);
        problem.errors = errors;
        problem
    }

    /// 404 with `detail`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND).with_detail(detail)
    }

    /// 409 with `detail`.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT).with_detail(detail)
    }

    /// 500 without details: what went wrong belongs in the log.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The status as a [`StatusCode`] (500 if `status` is not a valid code).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status_code(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(feature = "sql")]
/// Database failures as answers: a version conflict is a 409; anything worth retrying a
/// 503 with `Retry-After`; the rest a 500, with the details in the log only.
impl From<keel_sql::Error> for Problem {
    fn from(error: keel_sql::Error) -> Self {
        if error.is_conflict() {
            return Problem::conflict(error.to_string())
                .with_type("https://keel.invalid/problems/version-conflict");
        }
        tracing::error!(%error, "request failed");
        if error.is_retryable() {
            return Problem::new(http::StatusCode::SERVICE_UNAVAILABLE).with_retry_after(1);
        }
        Problem::internal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_names_the_field_and_sets_the_media_type() {
        let response =
            Problem::invalid_field("/items/0/quantity", "must be positive").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn a_problem_is_cheap_to_return() {
        assert!(std::mem::size_of::<Problem>() < 128, "{}", std::mem::size_of::<Problem>());
    }

    #[test]
    fn retry_after_becomes_a_header() {
        let response =
            Problem::new(StatusCode::TOO_MANY_REQUESTS).with_retry_after(3).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
