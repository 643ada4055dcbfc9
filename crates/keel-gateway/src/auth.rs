//! Who is calling: JWT bearer tokens (each key pinned to one algorithm; `exp`, `nbf`,
//! `iss` and `aud` checked; `sub` and the `roles` or `role` claim make the identity)
//! and named API keys (the name and the key's configured roles).

use std::str::FromStr;

use http::{HeaderMap, HeaderName, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keel_service::identity::Identity;
use serde::Deserialize;

use crate::config::{AuthConfig, JwtKeyConfig};
use crate::error::ConfigError;
use crate::jwks::Jwks;

/// Why credentials were refused (the gateway answers 401; the reason goes to the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Token(String),
    /// A valid token whose subject or roles cannot make an identity (empty, longer than
    /// `keel_service::identity::MAX_SUBJECT_LEN`, control characters, too many roles).
    Identity(String),
    ApiKey,
}

impl Refusal {
    /// What the 401 says.
    pub(crate) fn detail(&self) -> &'static str {
        match self {
            Self::Token(_) => "the bearer token is invalid",
            Self::Identity(_) => "the token's subject or roles are not acceptable",
            Self::ApiKey => "the API key is invalid",
        }
    }
}

struct JwtKey {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

pub(crate) struct Authenticator {
    jwt: Vec<JwtKey>,
    jwks: Option<Jwks>,
    leeway_s: u64,
    api_keys: Vec<(Identity, Vec<u8>)>,
    api_key_header: HeaderName,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt_keys", &self.jwt.len())
            .field(
                "api_keys",
                &self.api_keys.iter().map(|(identity, _)| identity.subject()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Option<Roles>,
    #[serde(default)]
    role: Option<String>,
}

/// A `roles` claim: an array of strings, or one string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Roles {
    Many(Vec<String>),
    One(String),
}

impl Claims {
    fn into_identity(self) -> Result<Identity, Refusal> {
        let mut roles = match self.roles {
            Some(Roles::Many(roles)) => roles,
            Some(Roles::One(role)) => vec![role],
            None => Vec::new(),
        };
        roles.extend(self.role);
        Identity::new(self.sub)
            .and_then(|identity| identity.with_roles(roles))
            .map_err(|e| Refusal::Identity(e.to_string()))
    }
}

/// Parses the algorithm and key of one JWT key config; the error is `(field, reason)`.
pub(crate) fn decoding_key(
    config: &JwtKeyConfig,
) -> Result<(Algorithm, DecodingKey), (&'static str, String)> {
    let alg = match config.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        other => {
            return Err((
                "alg",
                format!(
                    "`{other}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384"
                ),
            ));
        }
    };
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if hmac {
        if config.public_key_pem.is_some() {
            return Err((
                "public_key_pem",
                format!("{} takes a `secret`, not a public key", config.alg),
            ));
        }
        let Some(secret) = config.secret.as_deref().filter(|s| !s.is_empty()) else {
            return Err(("secret", format!("{} needs a non-empty `secret`", config.alg)));
        };
        return Ok((alg, DecodingKey::from_secret(secret.as_bytes())));
    }
    if config.secret.is_some() {
        return Err(("secret", format!("{} takes a `public_key_pem`, not a secret", config.alg)));
    }
    let Some(pem) = config.public_key_pem.as_deref() else {
        return Err(("public_key_pem", format!("{} needs a `public_key_pem`", config.alg)));
    };
    let key = if matches!(alg, Algorithm::ES256 | Algorithm::ES384) {
        DecodingKey::from_ec_pem(pem.as_bytes())
    } else {
        DecodingKey::from_rsa_pem(pem.as_bytes())
    };
    key.map(|key| (alg, key))
        .map_err(|e| ("public_key_pem", format!("not a {} public key in PEM: {e}", config.alg)))
}

impl Authenticator {
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut jwt = Vec::with_capacity(config.jwt.len());
        for (i, key_config) in config.jwt.iter().enumerate() {
            let (alg, key) = decoding_key(key_config).map_err(|(field, reason)| {
                ConfigError::invalid(format!("auth.jwt[{i}].{field}"), reason)
            })?;
            let mut validation = Validation::new(alg);
            validation.leeway = config.leeway_s;
            validation.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if let Some(iss) = &key_config.issuer {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            match &key_config.audience {
                Some(aud) => {
                    validation.set_audience(&[aud]);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            validation.set_required_spec_claims(&required);
            jwt.push(JwtKey { alg, kid: key_config.kid.clone(), key, validation });
        }
        let api_key_header = HeaderName::from_str(&config.api_key_header)
            .map_err(|_| ConfigError::invalid("auth.api_key_header", "not a valid header name"))?;
        let mut api_keys = Vec::with_capacity(config.api_keys.len());
        for (i, key) in config.api_keys.iter().enumerate() {
            api_keys.push((key.identity(i)?, key.key.as_bytes().to_vec()));
        }
        let jwks = config.jwks.as_ref().map(Jwks::new);
        Ok(Self { jwt, jwks, leeway_s: config.leeway_s, api_keys, api_key_header })
    }

    /// Who the request's credentials say is calling, `None` when it carries none, or
    /// why the credentials it carries are refused.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Identity>, Refusal> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| Refusal::Token("unreadable Authorization header".into()))?;
            if let Some(token) = strip_bearer(value) {
                let claims = self.verify_jwt(token.trim()).await.map_err(Refusal::Token)?;
                return claims.into_identity().map(Some);
            }
        }
        if let Some(value) = headers.get(&self.api_key_header) {
            let presented = value.as_bytes();
            // Compare against every key without stopping early, so timing says nothing.
            let mut found = None;
            for (identity, key) in &self.api_keys {
                if constant_time_eq(presented, key) && found.is_none() {
                    found = Some(identity.clone());
                }
            }
            return found.map(Some).ok_or(Refusal::ApiKey);
        }
        Ok(None)
    }

    async fn verify_jwt(&self, token: &str) -> Result<Claims, String> {
        // The header's `alg` only selects among keys pinned to that very algorithm:
        // `none` does not parse, and an HS256 token never meets an RSA key.
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("bad token header: {e}"))?;
        let mut last_error = format!("no key for alg {:?}", header.alg);
        let configured = self.jwt.iter().any(|key| {
            key.alg == header.alg
                && key.kid.as_ref().is_none_or(|kid| header.kid.as_deref() == Some(kid.as_str()))
        });
        // A token that no configured key can take goes to the JWK set by its `kid`.
        if !configured && let (Some(jwks), Some(kid)) = (&self.jwks, header.kid.as_deref()) {
            let key = jwks.key(kid).await?;
            if key.alg != header.alg {
                return Err(format!("key `{kid}` is for {:?}, not {:?}", key.alg, header.alg));
            }
            let validation = crate::jwks::validation(key.alg, jwks, self.leeway_s);
            return jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
                .map(|data| data.claims)
                .map_err(|e| e.to_string());
        }
        for key in &self.jwt {
            if key.alg != header.alg {
                continue;
            }
            if let Some(kid) = &key.kid
                && header.kid.as_deref() != Some(kid.as_str())
            {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(last_error)
    }
}

fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest)
}

/// Hand-written rather than a crate: a dozen lines, and only API keys need it.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    fn identity(claims: serde_json::Value) -> Result<Identity, Refusal> {
        serde_json::from_value::<Claims>(claims)
            .map_err(|e| Refusal::Token(e.to_string()))?
            .into_identity()
    }

    #[test]
    fn roles_come_from_a_roles_array_a_roles_string_or_a_role() {
        let alice = identity(serde_json::json!({ "sub": "alice", "roles": ["a", "b"] })).unwrap();
        assert_eq!(alice.roles(), ["a", "b"]);
        let bob = identity(serde_json::json!({ "sub": "bob", "roles": "a", "role": "b" })).unwrap();
        assert_eq!(bob.roles(), ["a", "b"]);
        assert!(identity(serde_json::json!({ "sub": "carol" })).unwrap().roles().is_empty());
        assert!(matches!(identity(serde_json::json!({ "sub": "" })), Err(Refusal::Identity(_))));
        assert!(matches!(
            identity(serde_json::json!({ "sub": "x".repeat(257) })),
            Err(Refusal::Identity(_))
        ));
        assert!(identity(serde_json::json!({ "sub": "d", "roles": [1] })).is_err());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(strip_bearer("Bearer x.y.z"), Some("x.y.z"));
        assert_eq!(strip_bearer("bearer x.y.z"), Some("x.y.z"));
        assert_eq!(strip_bearer("Basic abc"), None);
    }
}
