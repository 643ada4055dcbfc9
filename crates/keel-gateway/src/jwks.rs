//! JWT verification keys published as a JWK set (`KEEL_JWKS_URL`, an OIDC provider's
//! `jwks_uri`), for key rotation: the set is fetched on first use and fetched again
//! whenever a token names a `kid` the gateway does not know (at most once per
//! [`MIN_REFETCH`], so tokens with made-up ids cannot make the gateway hammer the
//! provider). A key that left the set stops verifying once the set is fetched again.
//!
//! Only signature keys with an asymmetric algorithm are taken (RSA, RSA-PSS, ECDSA on
//! P-256 and P-384); each is pinned to its `alg` (or, without one, to RS256 for RSA
//! keys and ES256/ES384 for EC keys by curve), and a token whose header names another
//! algorithm never meets it.

use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::JwksConfig;

/// The least time between two fetches of the set.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(1);
/// How long one fetch of the set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One key of the set.
pub(crate) struct JwksKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The usable keys of a set, by `kid`.
type KeySet = Arc<Vec<(String, Arc<JwksKey>)>>;

/// The keys of a JWK set by `kid`, with what a token must claim.
pub(crate) struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<KeySet>,
    /// When the set was last fetched; held while fetching, so that one fetch serves
    /// every request that waits for it.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Jwks {
    pub(crate) fn new(config: &JwksConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            url: config.url.clone(),
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            fetched: tokio::sync::Mutex::new(None),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }
    }

    fn known(&self, kid: &str) -> Option<Arc<JwksKey>> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        keys.iter().find(|(id, _)| id == kid).map(|(_, key)| Arc::clone(key))
    }

    /// The key named `kid`, fetching the set again if it is unknown (and the last
    /// fetch is at least [`MIN_REFETCH`] old).
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<JwksKey>, String> {
        if let Some(key) = self.known(kid) {
            return Ok(key);
        }
        let mut fetched = self.fetched.lock().await;
        // Another request may have fetched the set while this one waited.
        if let Some(key) = self.known(kid) {
            return Ok(key);
        }
        if fetched.is_none_or(|at| at.elapsed() >= MIN_REFETCH) {
            *fetched = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(url = %self.url, keys = keys.len(), "fetched the JWK set");
                    *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                }
                Err(error) => {
                    tracing::warn!(url = %self.url, %error, "cannot fetch the JWK set");
                }
            }
        }
        self.known(kid).ok_or_else(|| format!("no key `{kid}` in the JWK set"))
    }

    async fn fetch(&self) -> Result<Vec<(String, Arc<JwksKey>)>, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{} from {}", response.status(), self.url));
        }
        let set: JwkSet = response.json().await.map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(set.keys.iter().filter_map(usable).collect())
    }
}

/// A signature key of the set, pinned to its algorithm; `None` for keys without a
/// `kid`, for encryption, symmetric or unsupported.
fn usable(jwk: &Jwk) -> Option<(String, Arc<JwksKey>)> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_)))
    {
        return None;
    }
    let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(alg), _) => Algorithm::from_str(&alg.to_string()).ok()?,
        (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        (None, _) => return None,
    };
    let asymmetric = matches!(
        (alg, &jwk.algorithm),
        (
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            AlgorithmParameters::RSA(_)
        ) | (Algorithm::ES256 | Algorithm::ES384, AlgorithmParameters::EllipticCurve(_))
    );
    if !asymmetric {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, Arc::new(JwksKey { alg, key })))
}

/// The validation of a token verified with `alg` under `jwks`.
pub(crate) fn validation(alg: Algorithm, jwks: &Jwks, leeway_s: u64) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = leeway_s;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &jwks.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    match &jwks.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}
