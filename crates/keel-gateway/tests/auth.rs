//! Authentication through the gateway: what is accepted, what is refused, and the
//! subject header the upstream receives.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{client, gateway, json, problem, upstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use keel_gateway::{AuthConfig, AuthMode, GatewayConfig, JwtKeyConfig, RouteConfig};
use serde_json::json;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const RSA_PRIVATE: &str = include_str!("keys/rsa.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa.pub");
const EC_PRIVATE: &str = include_str!("keys/ec.pem");
const EC_PUBLIC: &str = include_str!("keys/ec.pub");
const API_KEY: &str = "ci-key-0123456789abcdef";

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": "keel", "aud": "keel-api", "exp": now() + 3600, "iat": now() })
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn rs256(claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    encode(&header, claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()).unwrap()
}

fn es256(claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::ES256),
        claims,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn key(alg: &str) -> JwtKeyConfig {
    JwtKeyConfig {
        alg: alg.into(),
        secret: None,
        public_key_pem: None,
        kid: None,
        issuer: Some("keel".into()),
        audience: Some("keel-api".into()),
    }
}

fn auth() -> AuthConfig {
    AuthConfig::default()
        .jwt(JwtKeyConfig { secret: Some(SECRET.into()), ..key("HS256") })
        .jwt(JwtKeyConfig {
            public_key_pem: Some(RSA_PUBLIC.into()),
            kid: Some("k1".into()),
            ..key("RS256")
        })
        .jwt(JwtKeyConfig { public_key_pem: Some(EC_PUBLIC.into()), ..key("ES256") })
        .api_key("ci", API_KEY)
}

/// A gateway with `/open` (no auth), `/req` (required), `/write` (writes only) and
/// `/admin` (required, subject `root` only), all to one echoing upstream.
async fn setup() -> String {
    let up = upstream().await;
    let url = vec![up.url()];
    let config = GatewayConfig::default()
        .auth(auth())
        .route(RouteConfig::to_upstreams("/open", url.clone()))
        .route(RouteConfig::to_upstreams("/req", url.clone()).auth(AuthMode::Required))
        .route(RouteConfig::to_upstreams("/write", url.clone()).auth(AuthMode::Write))
        .route(RouteConfig {
            allow_subjects: Some(vec!["root".into()]),
            ..RouteConfig::to_upstreams("/admin", url).auth(AuthMode::Required)
        });
    gateway(config).await
}

async fn get_with_token(gw: &str, path: &str, token: &str) -> reqwest::Response {
    client().get(format!("{gw}{path}")).bearer_auth(token).send().await.unwrap()
}

async fn subject_seen(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(response.status(), 200);
    json(response).await["headers"]["x-keel-subject"].clone()
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_pass_with_their_subject() {
    let gw = setup().await;
    let response = client()
        .get(format!("{gw}/req/x"))
        .bearer_auth(hs256(&claims("alice"), SECRET.as_bytes()))
        .header("x-keel-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(subject_seen(response).await, json!(["alice"]));
    assert_eq!(
        subject_seen(get_with_token(&gw, "/req/x", &rs256(&claims("rsa-user"))).await).await,
        json!(["rsa-user"])
    );
    assert_eq!(
        subject_seen(get_with_token(&gw, "/req/x", &es256(&claims("ec-user"))).await).await,
        json!(["ec-user"])
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let gw = setup().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("alice").to_string());
    for token in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
        let response = get_with_token(&gw, "/req/x", &token).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        problem(response, 401).await;
    }
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let gw = setup().await;
    let forged = hs256(&claims("alice"), RSA_PUBLIC.as_bytes());
    problem(get_with_token(&gw, "/req/x", &forged).await, 401).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let forged =
        encode(&header, &claims("alice"), &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()))
            .unwrap();
    problem(get_with_token(&gw, "/req/x", &forged).await, 401).await;

    // With only the RSA key configured, there is no HMAC key to confuse it with at all.
    let up = upstream().await;
    let only_rsa = AuthConfig::default()
        .jwt(JwtKeyConfig { public_key_pem: Some(RSA_PUBLIC.into()), ..key("RS256") });
    let gw = gateway(
        GatewayConfig::default()
            .auth(only_rsa)
            .route(RouteConfig::to_upstreams("/req", vec![up.url()]).auth(AuthMode::Required)),
    )
    .await;
    problem(
        get_with_token(&gw, "/req/x", &hs256(&claims("alice"), RSA_PUBLIC.as_bytes())).await,
        401,
    )
    .await;
    assert_eq!(get_with_token(&gw, "/req/x", &rs256(&claims("alice"))).await.status(), 200);
}

#[tokio::test]
async fn expired_immature_wrong_audience_and_wrong_issuer_tokens_are_refused() {
    let gw = setup().await;
    let mut cases = Vec::new();
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    cases.push(("expired", expired));
    let mut immature = claims("alice");
    immature["nbf"] = json!(now() + 3600);
    cases.push(("nbf in the future", immature));
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("someone-else");
    cases.push(("wrong audience", wrong_aud));
    let mut no_aud = claims("alice");
    no_aud.as_object_mut().unwrap().remove("aud");
    cases.push(("no audience", no_aud));
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("evil");
    cases.push(("wrong issuer", wrong_iss));
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", no_exp));
    let mut no_sub = claims("alice");
    no_sub.as_object_mut().unwrap().remove("sub");
    cases.push(("no sub", no_sub));
    for (case, claims) in cases {
        for token in [hs256(&claims, SECRET.as_bytes()), rs256(&claims), es256(&claims)] {
            let response = get_with_token(&gw, "/req/x", &token).await;
            assert_eq!(response.status(), 401, "{case} was accepted");
        }
    }
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let gw = setup().await;
    for token in [
        hs256(&claims("alice"), SECRET.as_bytes()),
        rs256(&claims("alice")),
        es256(&claims("alice")),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        // A flipped signature character.
        let sig = parts[2];
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let bad_sig = format!("{}.{}.{flipped}{}", parts[0], parts[1], &sig[1..]);
        problem(get_with_token(&gw, "/req/x", &bad_sig).await, 401).await;
        // A payload swapped for another subject under the same signature.
        let payload = URL_SAFE_NO_PAD.encode(claims("root").to_string());
        let swapped = format!("{}.{payload}.{}", parts[0], parts[2]);
        problem(get_with_token(&gw, "/admin/x", &swapped).await, 401).await;
        // A token signed with another secret.
        problem(
            get_with_token(
                &gw,
                "/req/x",
                &hs256(&claims("alice"), b"another-secret-entirely-0123456789"),
            )
            .await,
            401,
        )
        .await;
    }
}

#[tokio::test]
async fn api_keys_authenticate_as_their_name() {
    let gw = setup().await;
    let response =
        client().get(format!("{gw}/req/x")).header("x-api-key", API_KEY).send().await.unwrap();
    assert_eq!(subject_seen(response).await, json!(["ci"]));
    let response = client()
        .get(format!("{gw}/req/x"))
        .header("x-api-key", "ci-key-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    problem(response, 401).await;
    problem(client().get(format!("{gw}/req/x")).send().await.unwrap(), 401).await;
}

#[tokio::test]
async fn write_routes_need_credentials_for_writes_only() {
    let gw = setup().await;
    let response = client()
        .get(format!("{gw}/write/x"))
        .header("x-keel-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(subject_seen(response).await, serde_json::Value::Null);
    problem(client().post(format!("{gw}/write/x")).body("{}").send().await.unwrap(), 401).await;
    let response = client()
        .post(format!("{gw}/write/x"))
        .bearer_auth(hs256(&claims("writer"), SECRET.as_bytes()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(subject_seen(response).await, json!(["writer"]));
    // A bad token on a read is refused rather than silently ignored.
    problem(get_with_token(&gw, "/write/x", "not.a.token").await, 401).await;
}

#[tokio::test]
async fn open_routes_drop_a_client_supplied_subject() {
    let gw = setup().await;
    let response = client()
        .get(format!("{gw}/open/x"))
        .header("x-keel-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(subject_seen(response).await, serde_json::Value::Null);
}

#[tokio::test]
async fn subjects_outside_the_allow_list_get_403() {
    let gw = setup().await;
    problem(
        get_with_token(&gw, "/admin/x", &hs256(&claims("alice"), SECRET.as_bytes())).await,
        403,
    )
    .await;
    let response =
        get_with_token(&gw, "/admin/x", &hs256(&claims("root"), SECRET.as_bytes())).await;
    assert_eq!(subject_seen(response).await, json!(["root"]));
}

#[tokio::test]
async fn the_toml_form_configures_the_same_keys() {
    let up = upstream().await;
    let text = format!(
        r#"
        [auth]
        jwt = [{{ alg = "HS256", secret = "{SECRET}", issuer = "keel", audience = "keel-api" }},
               {{ alg = "RS256", public_key_pem = """{RSA_PUBLIC}""", kid = "k1" }}]
        api_keys = [{{ name = "ci", key = "{API_KEY}" }}]
        [[routes]]
        prefix = "/api"
        upstreams = ["{}"]
        auth = "required"
        "#,
        up.url()
    );
    let gw = gateway(GatewayConfig::from_toml_str(&text).unwrap()).await;
    assert_eq!(
        get_with_token(&gw, "/api/x", &hs256(&claims("alice"), SECRET.as_bytes())).await.status(),
        200
    );
    assert_eq!(get_with_token(&gw, "/api/x", &rs256(&claims("bob"))).await.status(), 200);
}

/// The identity an upstream received, verified with the key derived from `SECRET`
/// (what the services derive from the same `KEEL_JWT_SECRET`).
async fn identity_seen(response: reqwest::Response) -> keel_service::Identity {
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    let token = body["headers"]["x-keel-identity"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no x-keel-identity reached the upstream: {body}"));
    assert_eq!(body["headers"]["x-keel-identity"].as_array().unwrap().len(), 1, "{body}");
    keel_service::IdentityKey::derive_from_jwt_secret(SECRET).verify(token).unwrap()
}

fn claims_with(sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut claims = claims(sub);
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims
}

#[tokio::test]
async fn the_identity_reaches_the_upstream_signed_with_its_roles() {
    let gw = setup().await;
    let token = hs256(
        &claims_with("alice", json!({ "roles": ["admin", "events:read"] })),
        SECRET.as_bytes(),
    );
    let response = client()
        .get(format!("{gw}/req/x"))
        .bearer_auth(token)
        .header("x-keel-identity", "forged")
        .send()
        .await
        .unwrap();
    let identity = identity_seen(response).await;
    assert_eq!(identity.subject(), "alice");
    assert_eq!(identity.roles(), ["admin", "events:read"]);
    // A single `role` string, and a `roles` string, count as one role each.
    let token = hs256(&claims_with("bob", json!({ "role": "auditor" })), SECRET.as_bytes());
    let identity = identity_seen(get_with_token(&gw, "/req/x", &token).await).await;
    assert_eq!((identity.subject(), identity.roles()), ("bob", &["auditor".to_owned()][..]));
    let token = hs256(&claims_with("carol", json!({ "roles": "admin" })), SECRET.as_bytes());
    assert!(identity_seen(get_with_token(&gw, "/req/x", &token).await).await.is_admin());
    // Reads on a write-only route carry the identity too, when credentials come along.
    let token = hs256(&claims("dave"), SECRET.as_bytes());
    assert_eq!(
        identity_seen(get_with_token(&gw, "/write/x", &token).await).await.subject(),
        "dave"
    );
}

#[tokio::test]
async fn a_client_sent_identity_never_reaches_the_upstream() {
    let gw = setup().await;
    let forged = keel_service::IdentityKey::derive_from_jwt_secret(SECRET)
        .sign(&keel_service::Identity::new("root").unwrap().with_roles(["admin"]).unwrap());
    for path in ["/open/x", "/write/x"] {
        let response = client()
            .get(format!("{gw}{path}"))
            .header("x-keel-identity", &forged)
            .header("x-keel-subject", "root")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        assert!(body["headers"].get("x-keel-identity").is_none(), "{path}: {body}");
        assert!(body["headers"].get("x-keel-subject").is_none(), "{path}: {body}");
    }
}

#[tokio::test]
async fn api_keys_carry_their_configured_roles() {
    let up = upstream().await;
    let auth = AuthConfig::hs256(SECRET).api_key_with_roles("ops", API_KEY, &["admin"]);
    let gw = gateway(
        GatewayConfig::default()
            .auth(auth)
            .route(RouteConfig::to_upstreams("/req", vec![up.url()]).auth(AuthMode::Required)),
    )
    .await;
    let response =
        client().get(format!("{gw}/req/x")).header("x-api-key", API_KEY).send().await.unwrap();
    let identity = identity_seen(response).await;
    assert_eq!((identity.subject(), identity.is_admin()), ("ops", true));
}

#[tokio::test]
async fn a_subject_that_is_not_ascii_travels_in_the_identity_only() {
    let gw = setup().await;
    let token = hs256(&claims("Zoë ☕"), SECRET.as_bytes());
    let response = get_with_token(&gw, "/req/x", &token).await;
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    assert!(body["headers"].get("x-keel-subject").is_none(), "{body}");
    let token = body["headers"]["x-keel-identity"][0].as_str().unwrap();
    let identity = keel_service::IdentityKey::derive_from_jwt_secret(SECRET).verify(token).unwrap();
    assert_eq!(identity.subject(), "Zoë ☕");
}

#[tokio::test]
async fn an_overlong_or_empty_subject_is_401() {
    let gw = setup().await;
    for sub in ["s".repeat(257), "s".repeat(10_000), String::new(), "a\u{1}b".to_owned()] {
        let token = hs256(&claims(&sub), SECRET.as_bytes());
        let response = get_with_token(&gw, "/req/x", &token).await;
        problem(response, 401).await;
    }
    let many: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
    let token = hs256(&claims_with("alice", json!({ "roles": many })), SECRET.as_bytes());
    problem(get_with_token(&gw, "/req/x", &token).await, 401).await;
}

#[tokio::test]
async fn an_identity_secret_signs_instead_of_the_derived_key() {
    let up = upstream().await;
    let text = format!(
        r#"
        identity_secret = "an-identity-secret-of-its-own"
        [auth]
        jwt = [{{ alg = "HS256", secret = "{SECRET}" }}]
        api_keys = [{{ name = "ci", key = "{API_KEY}", roles = ["events:read"] }}]
        [[routes]]
        prefix = "/api"
        upstreams = ["{}"]
        auth = "required"
        "#,
        up.url()
    );
    let gw = gateway(GatewayConfig::from_toml_str(&text).unwrap()).await;
    let response =
        client().get(format!("{gw}/api/x")).header("x-api-key", API_KEY).send().await.unwrap();
    let body = json(response).await;
    let token = body["headers"]["x-keel-identity"][0].as_str().unwrap();
    let key = keel_service::IdentityKey::from_secret(b"an-identity-secret-of-its-own");
    let identity = key.verify(token).unwrap();
    assert_eq!((identity.subject(), identity.roles()), ("ci", &["events:read".to_owned()][..]));
    assert!(keel_service::IdentityKey::derive_from_jwt_secret(SECRET).verify(token).is_err());
    let short = GatewayConfig::from_toml_str("identity_secret = \"short\"").unwrap_err();
    assert_eq!(short.key(), Some("identity_secret"));
}
