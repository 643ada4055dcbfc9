//! [`Json`]: axum's JSON extractor, strict about what it lets through, with
//! problem+json rejections that name the field.

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::{Problem, ProblemField};

/// A JSON request body or response, like `axum::Json`, but strict, and every refusal
/// is a problem+json document:
///
/// - 415 without a JSON content type (`application/json`, `application/*+json`), or
///   with a charset other than UTF-8;
/// - 413 over the body limit;
/// - 400 for bytes that are not one JSON document;
/// - 422 naming the field (a JSON pointer in `errors[].pointer`) for a duplicated
///   member, a string holding NUL (`\u0000`, which PostgreSQL cannot store in text and
///   no text field needs), and for a missing field, an unknown one (types with
///   `#[serde(deny_unknown_fields)]`) or a value of the wrong type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_media_type(request.headers())?;
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

/// `Ok` for `application/json` or any `application/*+json`, in UTF-8 (no charset, or
/// `charset=utf-8`); else the 415 to answer.
#[allow(clippy::result_large_err)]
fn check_media_type(headers: &http::HeaderMap) -> Result<(), Problem> {
    let unsupported = |detail: String| {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_detail(detail)
            .with_field("Content-Type", "must be application/json (UTF-8)")
    };
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Err(unsupported(
            "expected a request body with content type application/json".to_owned(),
        ));
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !(essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json")))
    {
        return Err(unsupported(format!(
            "expected a request body with content type application/json, not {essence}"
        )));
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else { continue };
        let charset = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8"))
        {
            return Err(unsupported(format!("JSON bodies must be UTF-8, not charset={charset}")));
        }
    }
    Ok(())
}

#[cfg(test)]
fn is_json(headers: &http::HeaderMap) -> bool {
    check_media_type(headers).is_ok()
}

/// Deserializes `body` strictly (see [`Json`]): 400 for bytes that are not one JSON
/// document, 422 naming the field for anything else.
// The Problem is the extractor's rejection as is; boxing it would only move the copy.
#[allow(clippy::result_large_err)]
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let value = strict_value(body)?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let pointer = pointer(error.path());
        let message = error.into_inner().to_string();
        invalid(pointer, message)
    })
}

/// The document as a [`Value`], refusing duplicate members and NUL in strings.
#[allow(clippy::result_large_err)]
fn strict_value(body: &[u8]) -> Result<Value, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value =
        serde_path_to_error::deserialize::<_, Strict>(&mut deserializer).map_err(|error| {
            let pointer = pointer(error.path());
            let inner = error.into_inner();
            let message = without_position(&inner);
            if inner.is_data() {
                invalid(pointer, message)
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
    Ok(value.0)
}

/// The 422 for a data error at `pointer`. serde reports a missing, unknown or
/// duplicated field at the enclosing object; its name is appended from the message.
fn invalid(mut pointer: String, message: String) -> Problem {
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| quoted_field(&message, prefix));
    if let Some(field) = named {
        let segment = format!("/{}", escape(field));
        if !pointer.ends_with(&segment) {
            pointer.push_str(&segment);
        }
    }
    let pointer = if pointer.is_empty() { "/".to_owned() } else { pointer };
    Problem::invalid_body(vec![ProblemField { pointer, detail: message }])
}

/// A JSON value read strictly. Hand-written because neither serde_json nor a
/// maintained crate refuses duplicate members of an untyped value: serde_json keeps
/// the last one, so `{"name":"A","name":"B"}` would mean different things to
/// different readers.
struct Strict(Value);

const NUL: &str = "must not contain NUL (\\u0000) characters";

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinities; serde_json refuses numbers out of range.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        if v.contains('\0') {
            return Err(E::custom(NUL));
        }
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        if v.contains('\0') {
            return Err(E::custom(NUL));
        }
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict::deserialize(deserializer).map(|strict| strict.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
            let Strict(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

/// A member name, refused if it holds NUL.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        match Strict::deserialize(deserializer)?.0 {
            Value::String(key) => Ok(key),
            _ => Err(de::Error::custom("a member name must be a string")),
        }
    }
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
        assert_eq!(problem.status, 422);
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
    fn duplicate_keys_are_refused_naming_the_field() {
        let problem = parse::<serde_json::Value>(br#"{"name": "A", "name": "B"}"#).unwrap_err();
        assert_eq!(problem.status, 422, "{problem:?}");
        assert_eq!(fields(&problem), [("/name", "duplicate field `name`")]);
        let body = br#"{"items": [{"product_id": "p", "quantity": 1, "quantity": 2}]}"#;
        let problem = parse::<serde_json::Value>(body).unwrap_err();
        assert_eq!(fields(&problem)[0].0, "/items/0/quantity");
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let problem = parse::<Order>(br#"{"user_id": "a\u0000b", "items": []}"#).unwrap_err();
        assert_eq!(problem.status, 422, "{problem:?}");
        assert_eq!(fields(&problem)[0].0, "/user_id");
        let body = br#"{"user_id": "u", "items": [{"product_id": "\u0000", "quantity": 1}]}"#;
        let problem = parse::<Order>(body).unwrap_err();
        assert_eq!(fields(&problem)[0].0, "/items/0/product_id");
        let problem = parse::<serde_json::Value>(br#"{"a\u0000": 1}"#).unwrap_err();
        assert_eq!(problem.status, 422, "{problem:?}");
    }

    async fn extract(content_type: Option<&str>, body: &'static str) -> Result<(), Problem> {
        let mut request = http::Request::post("/");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(axum::body::Body::from(body)).unwrap();
        Json::<serde_json::Value>::from_request(request, &()).await.map(|_| ())
    }

    #[tokio::test]
    async fn only_utf8_json_bodies_are_accepted() {
        let body = r#"{"name": "A"}"#;
        assert!(extract(Some("application/json"), body).await.is_ok());
        assert!(extract(Some("application/json; charset=UTF-8"), body).await.is_ok());
        assert!(extract(Some("application/json; charset=\"utf-8\""), body).await.is_ok());
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/json; charset=iso-8859-1"),
            Some("application/json;charset=utf-16"),
        ] {
            let problem = extract(content_type, body).await.unwrap_err();
            assert_eq!(problem.status, 415, "{content_type:?}: {problem:?}");
        }
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
