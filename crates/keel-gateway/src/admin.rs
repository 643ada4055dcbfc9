//! Who may use the admin surface under `/_keel` (DESIGN 2.18: private by default).
//!
//! With an admin token (`KEEL_ADMIN_TOKEN`, the config's `admin_token`) every admin
//! request must carry `Authorization: Bearer <token>`, wherever it comes from (a
//! Prometheus scrape sends it with `authorization: {credentials_file: ...}`). Without
//! one, only clients on the loopback interface are answered: the surface is private
//! to the machine until a token opens it to the network. `/_keel/health` (which says
//! nothing but "ok" and the number of routes) stays open to anyone, for load balancers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::config::ADMIN_PREFIX;
use crate::proxy::problem;

/// The admin endpoint anyone may call.
const OPEN: &str = "/health";

/// The admin surface's access rule. Cheap to clone. Another admin route served next to
/// the gateway's (a console) applies the same rule through [`AdminAccess::check`].
#[derive(Clone, Default)]
pub struct AdminAccess {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess").field("token", &self.token.as_ref().map(|_| "***")).finish()
    }
}

impl AdminAccess {
    /// The rule for `token` (`None`: loopback clients only).
    pub fn new(token: Option<&str>) -> Self {
        Self { token: token.map(|t| Arc::from(t.as_bytes())) }
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `None` if the request may use `path` (an admin path) with `headers` from
    /// `peer`; otherwise the refusal to answer with: 401 (with `WWW-Authenticate:
    /// Bearer`) for a missing or wrong token, 403 for a client off the loopback
    /// interface when no token is configured. An unknown `peer` is not loopback.
    pub fn check(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Option<Response<Body>> {
        if path.strip_prefix(ADMIN_PREFIX) == Some(OPEN) {
            return None;
        }
        match &self.token {
            Some(token) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim().as_bytes());
                if presented.is_some_and(|p| constant_time_eq(p, token)) {
                    return None;
                }
                let mut refused = problem(
                    StatusCode::UNAUTHORIZED,
                    "the admin endpoints need the admin token as a bearer token",
                );
                refused.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keel-admin\""),
                );
                Some(refused)
            }
            None if peer.is_some_and(|p| p.ip().is_loopback()) => None,
            None => Some(problem(
                StatusCode::FORBIDDEN,
                "the admin endpoints answer loopback clients only; set KEEL_ADMIN_TOKEN to open them",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40_000))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    fn status(refusal: Option<Response<Body>>) -> u16 {
        refusal.map_or(200, |r| r.status().as_u16())
    }

    #[test]
    fn without_a_token_only_loopback_clients_get_in() {
        let access = AdminAccess::new(None);
        let none = HeaderMap::new();
        assert_eq!(status(access.check("/_keel/metrics", &none, peer("127.0.0.1"))), 200);
        assert_eq!(status(access.check("/_keel/routes", &none, peer("::1"))), 200);
        assert_eq!(status(access.check("/_keel/metrics", &none, peer("10.1.2.3"))), 403);
        assert_eq!(status(access.check("/_keel/console", &none, None)), 403);
        assert_eq!(status(access.check("/_keel/health", &none, peer("10.1.2.3"))), 200);
    }

    #[test]
    fn with_a_token_everyone_needs_it_even_on_loopback() {
        let access = AdminAccess::new(Some("an-admin-token-of-length"));
        let local = peer("127.0.0.1");
        assert_eq!(status(access.check("/_keel/metrics", &HeaderMap::new(), local)), 401);
        let wrong = bearer("an-admin-token-of-lengtH");
        assert_eq!(status(access.check("/_keel/metrics", &wrong, local)), 401);
        let right = bearer("an-admin-token-of-length");
        assert_eq!(status(access.check("/_keel/metrics", &right, peer("10.1.2.3"))), 200);
        assert_eq!(status(access.check("/_keel/health", &HeaderMap::new(), None)), 200);
        let refused = access.check("/_keel/routes", &HeaderMap::new(), local).unwrap();
        assert!(
            refused.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer")
        );
    }
}
