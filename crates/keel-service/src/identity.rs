//! Who a request acts for, in a form services can verify (DESIGN 2.18).
//!
//! The gateway authenticates the caller (JWT or API key) and forwards an
//! [`Identity`] as a short-lived token in [`IDENTITY_HEADER`]: an HS256 JWT with the
//! audience `keel-internal`, signed with the deployment's [`IdentityKey`]. A service
//! configured with the same key verifies it in the kit's middleware and hands
//! handlers a [`Caller`]; with a key configured, a bare `x-keel-subject` header is
//! ignored, so whoever reaches a service's port directly cannot claim to be someone
//! else. Service-to-service calls forward the token unchanged (`keel-client` reads it
//! from the [`keel_bus::layer::EventContext`]).
//!
//! The key is `KEEL_IDENTITY_SECRET` when set, else derived from `KEEL_JWT_SECRET`
//! ([`IdentityKey::derive_from_jwt_secret`]), so turning gateway auth on turns
//! identity checks on everywhere that shares the configuration. The derivation keeps
//! the two keys apart: a client's bearer token is never a valid identity token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Problem;

/// The header carrying the signed identity from the gateway to services.
pub const IDENTITY_HEADER: &str = "x-keel-identity";
/// The role that may act for any subject.
pub const ADMIN_ROLE: &str = "admin";
/// The longest subject accepted, in bytes (a subject is stored on every event).
pub const MAX_SUBJECT_LEN: usize = 256;
/// The most roles an identity carries.
pub const MAX_ROLES: usize = 32;

const AUDIENCE: &str = "keel-internal";
const ISSUER: &str = "keel";
/// How long a signed identity is valid: long enough for one request and the calls it
/// makes to other services, short enough that a leaked header soon stops working.
pub const IDENTITY_TTL: Duration = Duration::from_secs(300);

/// An authenticated caller: the subject (a JWT's `sub`, an API key's name) and roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// Why an identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The subject is the empty string.
    #[error("the subject is empty")]
    EmptySubject,
    /// The subject (or a role) is longer than [`MAX_SUBJECT_LEN`] bytes.
    #[error("the subject is longer than {MAX_SUBJECT_LEN} bytes")]
    SubjectTooLong,
    /// The subject (or a role) contains control characters.
    #[error("the subject contains control characters")]
    ControlCharacters,
    /// More roles than [`MAX_ROLES`].
    #[error("more than {MAX_ROLES} roles")]
    TooManyRoles,
    /// The `x-keel-identity` token is malformed, not signed with this key, or expired
    /// (with the JWT library's reason).
    #[error("invalid identity token: {0}")]
    Token(String),
}

impl Identity {
    /// An identity for `subject`, checked: not empty, at most [`MAX_SUBJECT_LEN`] bytes,
    /// no control characters. Any other Unicode is fine (it travels inside the token).
    pub fn new(subject: impl Into<String>) -> Result<Self, IdentityError> {
        let subject = subject.into();
        check_subject(&subject)?;
        Ok(Self { subject, roles: Vec::new() })
    }

    /// The same identity with `roles` (at most [`MAX_ROLES`], each checked like a
    /// subject).
    pub fn with_roles<I, R>(mut self, roles: I) -> Result<Self, IdentityError>
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        let roles: Vec<String> = roles.into_iter().map(Into::into).collect();
        if roles.len() > MAX_ROLES {
            return Err(IdentityError::TooManyRoles);
        }
        for role in &roles {
            check_subject(role)?;
        }
        self.roles = roles;
        Ok(self)
    }

    /// Who the request acts for (a user id, or a service name).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The roles granted, as the gateway found them.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// Whether `role` is among the roles (exact match).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether this identity has the [`ADMIN_ROLE`].
    pub fn is_admin(&self) -> bool {
        self.has_role(ADMIN_ROLE)
    }

    /// Whether this identity may act on a resource owned by `owner`: its own, or any
    /// as an admin.
    pub fn may_act_for(&self, owner: &str) -> bool {
        self.subject == owner || self.is_admin()
    }
}

fn check_subject(text: &str) -> Result<(), IdentityError> {
    if text.is_empty() {
        return Err(IdentityError::EmptySubject);
    }
    if text.len() > MAX_SUBJECT_LEN {
        return Err(IdentityError::SubjectTooLong);
    }
    if text.chars().any(char::is_control) {
        return Err(IdentityError::ControlCharacters);
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    aud: String,
    iss: String,
    iat: u64,
    exp: u64,
}

/// The secret that signs and verifies identities. See the module docs.
#[derive(Clone)]
pub struct IdentityKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(<redacted>)")
    }
}

impl IdentityKey {
    /// A key from a secret shared by the gateway and the services.
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The key derived from the gateway's JWT secret (SHA-256 of a fixed label and the
    /// secret), so that deployments configured with `KEEL_JWT_SECRET` alone agree on it.
    pub fn derive_from_jwt_secret(jwt_secret: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"keel identity key v1\0");
        hasher.update(jwt_secret.as_bytes());
        Self::from_secret(&hasher.finalize())
    }

    /// The token for `identity`, valid for [`IDENTITY_TTL`].
    pub fn sign(&self, identity: &Identity) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: identity.subject.clone(),
            roles: identity.roles.clone(),
            aud: AUDIENCE.to_owned(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + IDENTITY_TTL.as_secs(),
        };
        // HS256 over plain claims cannot fail to encode.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The identity a token carries, if this key signed it and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| IdentityError::Token(e.to_string()))?;
        Identity::new(data.claims.sub)?.with_roles(data.claims.roles)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Who is calling, as the kit's middleware established it; an extractor for handlers.
///
/// With an [`IdentityKey`] configured ([`Caller::is_enforced`]), the identity is the
/// verified one from [`IDENTITY_HEADER`] or none. Without one (the open mode, warned
/// about at start-up), `x-keel-subject` is taken at its word, and every check passes.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    identity: Option<Identity>,
    enforced: bool,
    token: Option<String>,
}

impl Caller {
    pub(crate) fn verified(identity: Identity, token: String) -> Self {
        Self { identity: Some(identity), enforced: true, token: Some(token) }
    }

    pub(crate) fn anonymous(enforced: bool) -> Self {
        Self { identity: None, enforced, token: None }
    }

    pub(crate) fn unverified(identity: Option<Identity>) -> Self {
        Self { identity, enforced: false, token: None }
    }

    /// The caller's identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The caller's subject, if any.
    pub fn subject(&self) -> Option<&str> {
        self.identity.as_ref().map(Identity::subject)
    }

    /// Whether identities are verified and required where a handler asks for one.
    pub fn is_enforced(&self) -> bool {
        self.enforced
    }

    /// The signed token the identity came in, to forward on calls to other services.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The identity, or [`Denied::Unauthenticated`] (401) when identities are enforced
    /// and the request has none. In the open mode a request without one passes
    /// (`Ok(None)`).
    pub fn require(&self) -> Result<Option<&Identity>, Denied> {
        match (&self.identity, self.enforced) {
            (Some(identity), _) => Ok(Some(identity)),
            (None, false) => Ok(None),
            (None, true) => Err(Denied::Unauthenticated),
        }
    }

    /// Whether the caller may act on a resource owned by `owner` (`None`: nobody's).
    /// Open mode: always. Enforced: the owner itself or an admin; a resource owned by
    /// nobody only by an admin.
    pub fn may_act_for(&self, owner: Option<&str>) -> bool {
        if !self.enforced {
            return true;
        }
        match (&self.identity, owner) {
            (Some(identity), Some(owner)) => identity.may_act_for(owner),
            (Some(identity), None) => identity.is_admin(),
            (None, _) => false,
        }
    }

    /// [`Caller::may_act_for`] as a result: 401 without an identity (enforced), 403
    /// when the identity may not act for `owner`.
    pub fn authorize_for(&self, owner: Option<&str>) -> Result<(), Denied> {
        self.require()?;
        if self.may_act_for(owner) { Ok(()) } else { Err(Denied::Forbidden) }
    }

    /// For what only some callers may do (read the whole event log, say). Open mode:
    /// passes. Enforced: 401 without an identity, 403 unless it has `role` or is an
    /// admin.
    pub fn authorize_role(&self, role: &'static str) -> Result<(), Denied> {
        match self.require()? {
            None => Ok(()),
            Some(identity) if identity.is_admin() || identity.has_role(role) => Ok(()),
            Some(_) => Err(Denied::MissingRole(role)),
        }
    }
}

/// Why a [`Caller`] may not do something; answers 401 or 403 as problem+json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// No identity came with the request (401).
    #[error("this request needs an authenticated caller")]
    Unauthenticated,
    /// The caller is neither the owner nor an admin (403).
    #[error("the caller may not act for this resource's owner")]
    Forbidden,
    /// The caller lacks the named role (403).
    #[error("this request needs the `{0}` role (or `admin`)")]
    MissingRole(&'static str),
}

impl Denied {
    /// 401 for [`Denied::Unauthenticated`], 403 otherwise.
    pub fn status_code(self) -> http::StatusCode {
        match self {
            Self::Unauthenticated => http::StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::MissingRole(_) => http::StatusCode::FORBIDDEN,
        }
    }
}

impl From<Denied> for Problem {
    fn from(denied: Denied) -> Self {
        Problem::new(denied.status_code()).with_detail(denied.to_string())
    }
}

impl axum::response::IntoResponse for Denied {
    fn into_response(self) -> axum::response::Response {
        Problem::from(self).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signed_identity_verifies_with_the_same_key_only() {
        let key = IdentityKey::derive_from_jwt_secret("a-secret-of-sixteen-bytes");
        let alice = Identity::new("alice").unwrap().with_roles(["admin"]).unwrap();
        let token = key.sign(&alice);
        assert_eq!(key.verify(&token).unwrap(), alice);
        let other = IdentityKey::derive_from_jwt_secret("another-secret-of-sixteen");
        assert!(matches!(other.verify(&token), Err(IdentityError::Token(_))));
        assert!(key.verify("not.a.token").is_err());
    }

    #[test]
    fn a_client_bearer_token_signed_with_the_jwt_secret_is_not_an_identity() {
        let secret = "a-secret-of-sixteen-bytes";
        let raw = IdentityKey::from_secret(secret.as_bytes());
        let token = raw.sign(&Identity::new("mallory").unwrap());
        let derived = IdentityKey::derive_from_jwt_secret(secret);
        assert!(derived.verify(&token).is_err());
    }

    #[test]
    fn subjects_are_bounded_but_may_be_any_unicode() {
        assert!(Identity::new("Zoë ☕").is_ok());
        assert_eq!(Identity::new(""), Err(IdentityError::EmptySubject));
        assert_eq!(Identity::new("x".repeat(257)), Err(IdentityError::SubjectTooLong));
        assert_eq!(Identity::new("a\u{0}b"), Err(IdentityError::ControlCharacters));
        let many: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
        assert_eq!(Identity::new("a").unwrap().with_roles(many), Err(IdentityError::TooManyRoles));
    }

    #[test]
    fn owners_and_admins_may_act_and_others_may_not() {
        let bob = Caller::verified(Identity::new("bob").unwrap(), String::new());
        assert!(bob.may_act_for(Some("bob")));
        assert!(!bob.may_act_for(Some("alice")));
        assert!(!bob.may_act_for(None));
        let root = Caller::verified(
            Identity::new("root").unwrap().with_roles(["admin"]).unwrap(),
            String::new(),
        );
        assert!(root.may_act_for(Some("alice")));
        assert!(Caller::anonymous(true).require().is_err());
        assert!(Caller::anonymous(false).require().unwrap().is_none());
        assert!(Caller::anonymous(false).may_act_for(Some("alice")));
        assert_eq!(bob.authorize_for(Some("alice")), Err(Denied::Forbidden));
        assert_eq!(Caller::anonymous(true).authorize_for(None), Err(Denied::Unauthenticated));
    }

    #[test]
    fn a_role_or_admin_is_needed_where_a_role_is_asked_for() {
        let reader = Caller::verified(
            Identity::new("tool").unwrap().with_roles(["events:read"]).unwrap(),
            String::new(),
        );
        let bob = Caller::verified(Identity::new("bob").unwrap(), String::new());
        let root = Caller::verified(
            Identity::new("root").unwrap().with_roles(["admin"]).unwrap(),
            String::new(),
        );
        assert_eq!(reader.authorize_role("events:read"), Ok(()));
        assert_eq!(root.authorize_role("events:read"), Ok(()));
        assert_eq!(bob.authorize_role("events:read"), Err(Denied::MissingRole("events:read")));
        assert_eq!(Caller::anonymous(true).authorize_role("x"), Err(Denied::Unauthenticated));
        assert_eq!(Caller::anonymous(false).authorize_role("x"), Ok(()));
    }
}
