//! [`Json`]: axum's JSON extractor with problem+json rejections that name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Problem;

/// A JSON request body or response, like `axum::Json`, but a bad request body is
/// answered with a problem+json document: 415 without a JSON content type, 413 over
/// the body limit, 400 for malformed JSON, and 400 naming the field (as a JSON
/// pointer in `errors[].pointer`) for a missing field or a value of the wrong type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .with_detail("expected a request body with content type application/json"));
        }
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            Problem::new(rejection.status()).with_detail(rejection.body_text())
        })?;
        parse(&body).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `application/json` or any `application/*+json`.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserializes `body`, turning the error into a 400 that points at the field.
// The Problem is the extractor's rejection as is; boxing it would only move the copy.
#[allow(clippy::result_large_err)]
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let mut pointer = pointer(error.path());
        let inner = error.into_inner();
        let message = without_position(&inner);
        if inner.is_data() {
            // serde reports a missing field at the enclosing object (and serde_path_to_error
            // may or may not have recorded an unknown one).
            if let Some(field) = quoted_field(&message, "missing field `")
                .or_else(|| quoted_field(&message, "unknown field `"))
            {
                let segment = format!("/{}", escape(field));
                if !pointer.ends_with(&segment) {
                    pointer.push_str(&segment);
                }
            }
            Problem::invalid_field(if pointer.is_empty() { "/" } else { &pointer }, message)
        } else {
            Problem::new(StatusCode::BAD_REQUEST)
                .with_detail(format!("the body is not valid JSON: {message}"))
                .with_field(if pointer.is_empty() { "/" } else { &pointer }, message.clone())
        }
    })?;
    deserializer.end().map_err(|e| {
        Problem::new(StatusCode::BAD_REQUEST)
            .with_detail(format!("the body is not valid JSON: {}", without_position(&e)))
    })?;
    Ok(value)
}

/// The JSON pointer (RFC 6901) of a serde path: `items[0].quantity` -> `/items/0/quantity`.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                pointer.push('/');
                pointer.push_str(&index.to_string());
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&escape(key));
            }
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    pointer
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn quoted_field<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

/// serde_json's message without its " at line L column C" suffix (the pointer says where).
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Order {
        user_id: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        product_id: String,
        quantity: u32,
    }

    fn fields(problem: &Problem) -> Vec<(&str, &str)> {
        problem.errors.iter().map(|f| (f.pointer.as_str(), f.detail.as_str())).collect()
    }

    #[test]
    fn a_missing_field_is_named() {
        let problem = parse::<Order>(br#"{"items": []}"#).unwrap_err();
        assert_eq!(problem.status, 400);
        assert_eq!(fields(&problem), [("/user_id", "missing field `user_id`")]);
    }

    #[test]
    fn a_nested_wrong_type_is_pointed_at() {
        let body = br#"{"user_id": "u", "items": [{"product_id": "p", "quantity": -1}]}"#;
        let problem = parse::<Order>(body).unwrap_err();
        assert_eq!(fields(&problem)[0].0, "/items/0/quantity");
        assert!(fields(&problem)[0].1.contains("invalid value"), "{problem:?}");
    }

    #[test]
    fn an_unknown_field_is_named_and_keys_are_escaped() {
        let body = br#"{"user_id": "u", "items": [{"product_id": "p", "quantity": 1, "a/b": 2}]}"#;
        let problem = parse::<Order>(body).unwrap_err();
        assert_eq!(fields(&problem)[0].0, "/items/0/a~1b");
    }

    #[test]
    fn malformed_json_is_a_400_too() {
        let problem = parse::<Order>(b"{\"user_id\": ").unwrap_err();
        assert_eq!(problem.status, 400);
        assert!(problem.detail.unwrap().contains("not valid JSON"));
        let problem = parse::<Order>(br#"{"user_id": "u", "items": []} x"#).unwrap_err();
        assert_eq!(problem.status, 400);
    }

    #[test]
    fn json_media_types() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&headers), json, "{value}");
        }
    }
}
