//! JSON request bodies: the extractor and the field checks.

use crate::{Problem, ProblemField};
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use http::StatusCode;
use serde_json::Value;

/// The largest request body the services accept (larger: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body limit layer every service router carries.
pub fn body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_BODY_BYTES)
}

/// A JSON request body as a `serde_json::Value`, for [`Fields`] to check.
///
/// It is the kit's strict [`crate::Json`] extractor, so every service refuses
/// the same things, as problem+json: 415 for another media type or a charset other
/// than UTF-8, 413 over [`MAX_BODY_BYTES`] (with [`body_limit`]), 400 for bytes that
/// are not JSON, 422 naming the member for a duplicated one or a NUL in a string.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match crate::Json::<Value>::from_request(req, state).await {
            Ok(crate::Json(value)) => Ok(Self(value)),
            Err(problem) if problem.status_code() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(problem.with_detail(format!("the body is larger than {MAX_BODY_BYTES} bytes")))
            }
            Err(problem) => Err(problem),
        }
    }
}

/// Checks the fields of a JSON body, collecting every fault as a JSON pointer and a
/// reason; [`Fields::finish`] answers them all at once as a 422. A member no check
/// asked for is a fault too ("is not a known field"): a misspelt optional field, or
/// one the client hoped would be honoured (`"admin": true`), is refused, not ignored.
#[derive(Debug)]
pub struct Fields<'a> {
    body: &'a Value,
    errors: Vec<ProblemField>,
    /// The pointers the checks asked for.
    asked: Vec<String>,
}

impl<'a> Fields<'a> {
    /// Starts checking `body`, which must be a JSON object.
    pub fn new(body: &'a Value) -> Self {
        let mut fields = Self { body, errors: Vec::new(), asked: Vec::new() };
        if !body.is_object() {
            fields.invalid("", "the body must be a JSON object");
        }
        fields
    }

    /// Records a fault.
    pub fn invalid(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.errors.push(ProblemField { pointer: pointer.into(), detail: detail.into() });
    }

    /// Whether a fault has been recorded so far.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    fn required(&mut self, pointer: &str) -> Option<&'a Value> {
        self.asked.push(pointer.to_owned());
        if !self.body.is_object() {
            return None;
        }
        match self.body.pointer(pointer) {
            None | Some(Value::Null) => {
                self.invalid(pointer, "is required");
                None
            }
            Some(value) => Some(value),
        }
    }

    /// A required, non-blank string of at most `max_chars` characters (trimmed).
    pub fn string(&mut self, pointer: &str, max_chars: usize) -> Option<String> {
        let value = self.required(pointer)?;
        let Some(s) = value.as_str() else {
            self.invalid(pointer, "must be a string");
            return None;
        };
        let s = s.trim();
        if s.is_empty() {
            self.invalid(pointer, "must not be empty");
            None
        } else if s.chars().any(char::is_control) {
            self.invalid(pointer, "must not contain control characters");
            None
        } else if s.chars().count() > max_chars {
            self.invalid(pointer, format!("must be at most {max_chars} characters"));
            None
        } else {
            Some(s.to_owned())
        }
    }

    /// A required integer in `min..=max`.
    pub fn integer(&mut self, pointer: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.required(pointer)?;
        let Some(n) = value.as_i64() else {
            self.invalid(pointer, format!("must be an integer from {min} to {max}"));
            return None;
        };
        if n < min {
            let detail = if min == 1 {
                "must be positive".to_owned()
            } else if min == 0 {
                "must not be negative".to_owned()
            } else {
                format!("must be at least {min}")
            };
            self.invalid(pointer, detail);
            None
        } else if n > max {
            self.invalid(pointer, format!("must be at most {max}"));
            None
        } else {
            Some(n)
        }
    }

    /// A required array of `min_len..=max_len` elements.
    pub fn array(&mut self, pointer: &str, min_len: usize, max_len: usize) -> Option<&'a [Value]> {
        let value = self.required(pointer)?;
        let Some(items) = value.as_array() else {
            self.invalid(pointer, "must be an array");
            return None;
        };
        if items.len() < min_len {
            self.invalid(pointer, format!("must have at least {min_len} element(s)"));
            None
        } else if items.len() > max_len {
            self.invalid(pointer, format!("must have at most {max_len} elements"));
            None
        } else {
            Some(items.as_slice())
        }
    }

    /// A required e-mail address: a string with one `@`, something before it and a dot
    /// after it (deliverability is the mail server's business).
    pub fn email(&mut self, pointer: &str) -> Option<String> {
        let email = self.string(pointer, 254)?;
        let valid = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(char::is_whitespace)
        });
        if valid {
            Some(email)
        } else {
            self.invalid(pointer, "must be an e-mail address");
            None
        }
    }

    /// `Ok` when every check passed and the body has no member no check asked for,
    /// else a 422 naming each faulty field.
    pub fn finish(mut self) -> Result<(), Problem> {
        let mut unknown = Vec::new();
        if self.body.is_object() {
            self.unknown_members(self.body, "", &mut unknown);
        }
        for pointer in unknown {
            self.invalid(pointer, "is not a known field");
        }
        if self.errors.is_empty() {
            return Ok(());
        }
        Err(Problem::invalid_body(self.errors))
    }

    /// Collects the members under `pointer` that no check asked for. A member is known
    /// when a check asked for it (its value is that check's business) or for something
    /// inside it (then its members and elements are looked at in turn).
    fn unknown_members(&self, value: &Value, pointer: &str, unknown: &mut Vec<String>) {
        let inside = |p: &str| {
            self.asked
                .iter()
                .any(|a| a.len() > p.len() && a.starts_with(p) && a.as_bytes()[p.len()] == b'/')
        };
        match value {
            Value::Object(members) => {
                for (key, member) in members {
                    let p = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                    if inside(&p) {
                        self.unknown_members(member, &p, unknown);
                    } else if !self.asked.contains(&p) {
                        unknown.push(p);
                    }
                }
            }
            Value::Array(items) => {
                for (n, item) in items.iter().enumerate() {
                    let p = format!("{pointer}/{n}");
                    if inside(&p) {
                        self.unknown_members(item, &p, unknown);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pointers(result: Result<(), Problem>) -> Vec<String> {
        result.unwrap_err().errors.into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn every_fault_is_named_by_its_pointer() {
        let body = json!({"name": "", "price": "3", "items": [{"q": 0}], "email": "x@y"});
        let mut f = Fields::new(&body);
        assert_eq!(f.string("/name", 10), None);
        assert_eq!(f.integer("/price", 1, 10), None);
        assert_eq!(f.integer("/items/0/q", 1, 10), None);
        assert_eq!(f.string("/missing", 10), None);
        assert_eq!(f.email("/email"), None);
        assert_eq!(pointers(f.finish()), ["/name", "/price", "/items/0/q", "/missing", "/email"]);
    }

    #[test]
    fn valid_fields_pass() {
        let body = json!({"name": " Ada ", "n": 3, "items": [1], "email": "ada@example.org"});
        let mut f = Fields::new(&body);
        assert_eq!(f.string("/name", 10).as_deref(), Some("Ada"));
        assert_eq!(f.integer("/n", 1, 10), Some(3));
        assert_eq!(f.array("/items", 1, 5).map(<[Value]>::len), Some(1));
        assert!(f.email("/email").is_some());
        assert!(f.finish().is_ok());
    }

    #[test]
    fn members_no_check_asked_for_are_named() {
        let body = json!({
            "user_id": "u", "admin": true,
            "items": [{"product_id": "p", "quantity": 1, "discount": 5}, {"product_id": "q", "quantity": 2}],
        });
        let mut f = Fields::new(&body);
        assert!(f.string("/user_id", 10).is_some());
        let items = f.array("/items", 1, 5).unwrap();
        for n in 0..items.len() {
            assert!(f.string(&format!("/items/{n}/product_id"), 10).is_some());
            assert!(f.integer(&format!("/items/{n}/quantity"), 1, 10).is_some());
        }
        assert_eq!(pointers(f.finish()), ["/admin", "/items/0/discount"]);

        // A value of the wrong shape is its check's fault, not a pile of unknown members.
        let body = json!({"name": {"first": "A"}});
        let mut f = Fields::new(&body);
        assert_eq!(f.string("/name", 10), None);
        assert_eq!(pointers(f.finish()), ["/name"]);
    }

    #[test]
    fn control_characters_are_refused_in_text() {
        let body = json!({"name": "a\u{1}b", "other": "line\nbreak"});
        let mut f = Fields::new(&body);
        assert_eq!(f.string("/name", 10), None);
        assert_eq!(f.string("/other", 20), None);
        assert_eq!(pointers(f.finish()), ["/name", "/other"]);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        let body = json!([1, 2]);
        let mut f = Fields::new(&body);
        assert_eq!(f.string("/name", 10), None);
        let problem = f.finish().unwrap_err();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors.len(), 1);
        assert_eq!(problem.errors[0].pointer, "");
    }
}
