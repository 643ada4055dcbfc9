//! JWT keys from a JWK set URL (`KEEL_JWKS_URL`): the test serves the set itself and
//! rotates the provider's key; the gateway picks the new key up by its `kid` without a
//! restart, stops taking the old one, and does not refetch more than once a second
//! however many unknown ids it is shown.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use common::{client, gateway, problem, upstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use keel_gateway::{AuthConfig, AuthMode, GatewayConfig, JwksConfig, RouteConfig};
use serde_json::{Value, json};

const K1_PRIVATE: &str = include_str!("keys/jwks-k1.pem");
const K2_PRIVATE: &str = include_str!("keys/jwks-k2.pem");

fn k1() -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
           "x": "uvT2X-aPbVUkezAXmFo-O_vlGqWGE92V6Vx8QPxbpZY",
           "y": "YhjJ0Ue8vmQQuxHo94pGrqYnlzgj0m3McbR7F0Bv9XY"})
}

/// Without `alg`: an EC P-256 key is taken as ES256.
fn k2() -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": "k2", "use": "sig",
           "x": "_gO8O7RwiPtLsHS-QcEEJRg8Yt0sJ8n8dMSqqQjtk4E",
           "y": "B7IoSnx4CVRbO3Lln5hVtuEmQ1oGVYwWtSy1d0UYzMg"})
}

#[derive(Clone, Default)]
struct Provider {
    set: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(State(provider): State<Provider>) -> axum::Json<Value> {
    provider.fetches.fetch_add(1, Ordering::SeqCst);
    axum::Json(provider.set.lock().unwrap().clone())
}

async fn serve(provider: Provider) -> String {
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .with_state(provider);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/.well-known/jwks.json")
}

fn token(kid: &str, private_pem: &str) -> String {
    let now =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let claims = json!({"sub": "alice", "iss": "https://idp.example", "aud": "keel-api",
                        "exp": now + 600, "iat": now});
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, &EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap()).unwrap()
}

async fn status(base: &str, token: &str) -> u16 {
    client().get(format!("{base}/req/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_rotated_key_is_fetched_by_its_kid_and_the_old_one_stops_working() {
    let provider = Provider::default();
    *provider.set.lock().unwrap() = json!({"keys": [k1()]});
    let url = serve(provider.clone()).await;
    let up = upstream().await;
    let jwks = JwksConfig {
        issuer: Some("https://idp.example".into()),
        audience: Some("keel-api".into()),
        ..JwksConfig::new(url)
    };
    let config = GatewayConfig::default()
        .auth(AuthConfig::default().jwks(jwks))
        .route(RouteConfig::to_upstreams("/req", vec![up.url()]).auth(AuthMode::Required));
    let base = gateway(config).await;

    assert_eq!(status(&base, &token("k1", K1_PRIVATE)).await, 200);
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1, "fetched on first use");
    // k2 is not published yet: refused.
    let early = client().get(format!("{base}/req/x")).bearer_auth(token("k2", K2_PRIVATE));
    problem(early.send().await.unwrap(), 401).await;
    // A token signed by k2's key that claims to be k1 does not verify.
    assert_eq!(status(&base, &token("k1", K2_PRIVATE)).await, 401);

    // The provider rotates: k2 in, k1 out.
    *provider.set.lock().unwrap() = json!({"keys": [k2()]});
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&base, &token("k2", K2_PRIVATE)).await, 200, "new key picked up");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&base, &token("k1", K1_PRIVATE)).await, 401, "old key dropped");

    // Made-up key ids do not make the gateway hammer the provider.
    let before = provider.fetches.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for i in 0..20 {
        assert_eq!(status(&base, &token(&format!("forged-{i}"), K1_PRIVATE)).await, 401);
    }
    let fetched = provider.fetches.load(Ordering::SeqCst) - before;
    // At most one fetch per started second.
    let allowed = 1 + usize::try_from(started.elapsed().as_secs()).unwrap();
    assert!(
        fetched <= allowed,
        "{fetched} fetches for 20 unknown key ids in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_jwks_url_must_be_http_or_https() {
    let config = GatewayConfig::default()
        .auth(AuthConfig::default().jwks(JwksConfig::new("file:///etc/keys.json")));
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("auth.jwks.url"), "{error}");
}
