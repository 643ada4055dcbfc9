//! Whether users and products exist: the orders service asks their owners.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use keel_client::{ClientConfig, ServiceClient};
use keel_registry::Registry;
use tower::ServiceExt as _;

use crate::error::Error;

/// Looks up users and products (`dyn`-safe: the implementation is chosen at start-up).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    async fn user_exists(&self, id: &str) -> Result<bool, Error>;
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

    async fn get(client: &ServiceClient, path: String) -> Result<StatusCode, Error> {
        let request = Request::get(path)
            .body(bytes::Bytes::new())
            .map_err(|e| Error::Directory(e.to_string()))?;
        let response = client
            .send(request)
            .await
            .map_err(|e| Error::Directory(format!("the {} service: {e}", client.service())))?;
        Ok(response.status())
    }
}

#[async_trait]
impl Directory for DiscoveryDirectory {
    async fn user_exists(&self, id: &str) -> Result<bool, Error> {
        if !plain_id(id) {
            return Ok(false);
        }
        exists(Self::get(&self.users, format!("/api/users/{id}")).await?, "the users service")
    }

    async fn product_exists(&self, id: &str) -> Result<bool, Error> {
        if !plain_id(id) {
            return Ok(false);
        }
        let status = Self::get(&self.products, format!("/api/products/{id}")).await?;
        exists(status, "the products service")
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

    async fn get(router: &Router, uri: String) -> Result<StatusCode, Error> {
        let request =
            Request::get(uri).body(Body::empty()).map_err(|e| Error::Directory(e.to_string()))?;
        let response =
            router.clone().oneshot(request).await.map_err(|e| Error::Directory(e.to_string()))?;
        Ok(response.status())
    }
}

#[async_trait]
impl Directory for RouterDirectory {
    async fn user_exists(&self, id: &str) -> Result<bool, Error> {
        if !plain_id(id) {
            return Ok(false);
        }
        exists(Self::get(&self.users, format!("/api/users/{id}")).await?, "the users router")
    }

    async fn product_exists(&self, id: &str) -> Result<bool, Error> {
        if !plain_id(id) {
            return Ok(false);
        }
        let status = Self::get(&self.products, format!("/api/products/{id}")).await?;
        exists(status, "the products router")
    }
}
