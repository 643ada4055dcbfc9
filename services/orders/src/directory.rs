//! Whether users and products exist, and whether the caller may act for a user: the
//! orders service asks the services that own them, on behalf of the caller.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use http::{HeaderValue, Request, StatusCode};
use keel::bus::layer::current_context;
use keel::client::{ClientConfig, ServiceClient};
use keel::http::{IDENTITY_HEADER, SUBJECT};
use keel::registry::Registry;
use tower::ServiceExt as _;

use crate::error::Error;

/// What the users service says about a user, asked on behalf of the caller (whose
/// identity travels with the question).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserLookup {
    /// It exists, the caller may act for it, and it belongs to `owner` (`None`: it was
    /// registered in the open mode).
    Found { owner: Option<String> },
    /// There is no such user.
    Missing,
    /// It exists, but the caller may not act for it (403).
    Forbidden,
}

/// Looks up users and products (`dyn`-safe: the implementation is chosen at start-up).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    async fn user(&self, id: &str) -> Result<UserLookup, Error>;
    async fn product_exists(&self, id: &str) -> Result<bool, Error>;
}

/// Ids the services hand out are UUIDs; anything outside this alphabet names nothing
/// and is never put into a URL.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 200 = exists, 404 = does not; anything else is a failed lookup.
fn exists(status: StatusCode, what: &str) -> Result<bool, Error> {
    match status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        other => Err(Error::Directory(format!("{what} answered {other}"))),
    }
}

/// The users service's answer to `GET /api/users/{id}` as a [`UserLookup`]; anything
/// but 200, 403 and 404 is a failed lookup.
fn user_lookup(status: StatusCode, body: &[u8], what: &str) -> Result<UserLookup, Error> {
    match status {
        StatusCode::OK => {
            let user: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                Error::Directory(format!("{what} answered a user that is not JSON: {e}"))
            })?;
            Ok(UserLookup::Found { owner: user["owner"].as_str().map(str::to_owned) })
        }
        StatusCode::FORBIDDEN => Ok(UserLookup::Forbidden),
        StatusCode::NOT_FOUND => Ok(UserLookup::Missing),
        other => Err(Error::Directory(format!("{what} answered {other}"))),
    }
}

/// Asks the users and products services over HTTP, finding their healthy instances
/// through the registry (`GET /api/users/{id}`, `GET /api/products/{id}`), with
/// keel-client's balancing, timeouts, retries of these idempotent reads and a circuit
/// breaker per instance.
#[derive(Clone, Debug)]
pub struct DiscoveryDirectory {
    users: ServiceClient,
    products: ServiceClient,
}

impl DiscoveryDirectory {
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let config = || ClientConfig { timeout: Duration::from_secs(5), ..ClientConfig::default() };
        Self {
            users: ServiceClient::discover(&*registry, "users", config()),
            products: ServiceClient::discover(&*registry, "products", config()),
        }
    }

    /// keel-client forwards the caller's identity from the request's context.
    async fn get(
        client: &ServiceClient,
        path: String,
    ) -> Result<http::Response<bytes::Bytes>, Error> {
        let request = Request::get(path)
            .body(bytes::Bytes::new())
            .map_err(|e| Error::Directory(e.to_string()))?;
        client
            .send(request)
            .await
            .map_err(|e| Error::Directory(format!("the {} service: {e}", client.service())))
    }
}

#[async_trait]
impl Directory for DiscoveryDirectory {
    async fn user(&self, id: &str) -> Result<UserLookup, Error> {
        if !plain_id(id) {
            return Ok(UserLookup::Missing);
        }
        let response = Self::get(&self.users, format!("/api/users/{id}")).await?;
        user_lookup(response.status(), response.body(), "the users service")
    }

    async fn product_exists(&self, id: &str) -> Result<bool, Error> {
        if !plain_id(id) {
            return Ok(false);
        }
        let response = Self::get(&self.products, format!("/api/products/{id}")).await?;
        exists(response.status(), "the products service")
    }
}

/// Asks the users and products routers in the same process (`keel up` without
/// network hops, and tests), through the same HTTP contract.
#[derive(Clone, Debug)]
pub struct RouterDirectory {
    users: Router,
    products: Router,
}

impl RouterDirectory {
    pub fn new(users: Router, products: Router) -> Self {
        Self { users, products }
    }

    /// Asks with the caller's identity from the request's context, as keel-client does
    /// over the network: the signed identity, or in the open mode the subject.
    async fn get(router: &Router, uri: String) -> Result<(StatusCode, bytes::Bytes), Error> {
        let mut request = Request::get(uri);
        if let Some(context) = current_context() {
            let identity = context.credentials.map(|token| (IDENTITY_HEADER, token));
            let subject = context.actor.map(|actor| (SUBJECT, actor));
            if let Some((name, value)) = identity.or(subject)
                && let Ok(value) = HeaderValue::try_from(value)
            {
                request = request.header(name, value);
            }
        }
        let request = request.body(Body::empty()).map_err(|e| Error::Directory(e.to_string()))?;
        let response =
            router.clone().oneshot(request).await.map_err(|e| Error::Directory(e.to_string()))?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024 * 1024)
            .await
            .map_err(|e| Error::Directory(e.to_string()))?;
        Ok((status, body))
    }
}

#[async_trait]
impl Directory for RouterDirectory {
    async fn user(&self, id: &str) -> Result<UserLookup, Error> {
        if !plain_id(id) {
            return Ok(UserLookup::Missing);
        }
        let (status, body) = Self::get(&self.users, format!("/api/users/{id}")).await?;
        user_lookup(status, &body, "the users router")
    }

    async fn product_exists(&self, id: &str) -> Result<bool, Error> {
        if !plain_id(id) {
            return Ok(false);
        }
        let (status, _) = Self::get(&self.products, format!("/api/products/{id}")).await?;
        exists(status, "the products router")
    }
}
