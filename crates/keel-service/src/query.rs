//! [`Query`]: axum's query-string extractor, with problem+json rejections that name
//! the parameter.

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::Problem;

/// A query string, like `axum::extract::Query`, but every refusal is a 400
/// problem+json naming the parameter (in `errors[].pointer`): a value of the wrong
/// type, a missing required parameter, and, on types with
/// `#[serde(deny_unknown_fields)]`, a parameter the route does not take. A client that
/// misspells a paging parameter (`?cursor=` for `?after=`) learns it at once instead
/// of getting the first page again and again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Parses a query string (without the `?`) into `T`.
#[allow(clippy::result_large_err)]
pub(crate) fn parse<T: DeserializeOwned>(query: &str) -> Result<T, Problem> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        if let Some(name) = unknown_field(&message) {
            let expected = message.split_once(", ").map_or("", |(_, rest)| rest);
            let detail = if expected.is_empty() {
                "unknown query parameter".to_owned()
            } else {
                format!("unknown query parameter; {expected}")
            };
            return Problem::invalid_field(name, detail);
        }
        let name = if path.is_empty() || path == "." {
            missing_field(&message).unwrap_or("query").to_owned()
        } else {
            path
        };
        Problem::invalid_field(name, message)
    })
}

/// `foo` of serde's "unknown field `foo`, expected ...".
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// `foo` of serde's "missing field `foo`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Paging {
        limit: Option<u32>,
        after: Option<String>,
        #[serde(rename = "type")]
        ty: Option<String>,
    }

    fn field(problem: &Problem) -> String {
        let body = serde_json::to_value(problem).unwrap();
        body["errors"][0]["pointer"].as_str().unwrap().to_owned()
    }

    #[test]
    fn known_parameters_parse() {
        let paging: Paging = parse("limit=5&after=0.1.2&type=a.b").unwrap();
        assert_eq!(paging.limit, Some(5));
        assert_eq!(paging.ty.as_deref(), Some("a.b"));
        let empty: Paging = parse("").unwrap();
        assert_eq!(empty.limit, None);
    }

    #[test]
    fn an_unknown_parameter_is_named() {
        let problem = parse::<Paging>("limit=5&cursor=abc").unwrap_err();
        assert_eq!(problem.status_code(), http::StatusCode::BAD_REQUEST);
        assert_eq!(field(&problem), "cursor");
        assert!(problem.detail.as_deref().unwrap_or_default().contains("after"), "{problem:?}");
    }

    #[test]
    fn a_bad_value_is_named() {
        let problem = parse::<Paging>("limit=lots").unwrap_err();
        assert_eq!(problem.status_code(), http::StatusCode::BAD_REQUEST);
        assert_eq!(field(&problem), "limit");
    }
}
