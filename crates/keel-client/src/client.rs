//! [`ServiceClient`]: HTTP calls to another service by name, over an [`Endpoints`]
//! pool, with a timeout per attempt, budgeted retries of idempotent calls on another
//! instance, and the caller's trace, request id and subject propagated.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use keel_registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::budget::RetryBudget;
use crate::error::{ClientError, is_retryable_status};
use crate::pool::{Endpoints, Pick, PoolConfig};

/// Marks a non-idempotent request (POST, PATCH) as safe to retry.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// W3C trace context of the call.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate` accompanying [`TRACEPARENT`].
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The request (correlation) id, kept across the services one request goes through.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Who the call is made on behalf of.
pub const SUBJECT: HeaderName = HeaderName::from_static("x-keel-subject");
/// The caller's signed identity (see `keel_service::identity`), forwarded as it came.
pub(crate) const IDENTITY: HeaderName = HeaderName::from_static("x-keel-identity");

/// Timeouts, retries and pooling of a [`ServiceClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Per attempt, from sending the request to the end of the response body.
    pub timeout: Duration,
    /// Retries after the first attempt, for idempotent calls only.
    pub max_retries: u32,
    /// Shared by every call of the client (and of any client given the same `Arc`).
    pub retry_budget: Arc<RetryBudget>,
    /// Used by [`ServiceClient::discover`] to build the pool.
    pub pool: PoolConfig,
}

impl Default for ClientConfig {
    /// 5 s per attempt, up to 2 retries, the default budget and pool.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_retries: 2,
            retry_budget: Arc::new(RetryBudget::default()),
            pool: PoolConfig::default(),
        }
    }
}

/// A response extension: the base URL of the instance that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub String);

/// A client for one service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    service: Arc<str>,
    endpoints: Endpoints,
    http: reqwest::Client,
    config: ClientConfig,
}

impl ServiceClient {
    /// A client calling `service` on the instances of `endpoints` (the name is used in
    /// errors and metrics).
    pub fn new(service: &str, endpoints: Endpoints, config: ClientConfig) -> Self {
        let http = reqwest::Client::builder()
            // Calls go straight to the instances discovery returns.
            .no_proxy()
            .connect_timeout(config.timeout)
            .build()
            // Without TLS backends the builder has nothing that can fail.
            .expect("a plain-HTTP reqwest client builds");
        Self::with_http_client(service, endpoints, config, http)
    }

    /// Like [`ServiceClient::new`], sharing an existing connection pool.
    pub fn with_http_client(
        service: &str,
        endpoints: Endpoints,
        config: ClientConfig,
        http: reqwest::Client,
    ) -> Self {
        Self { service: Arc::from(service), endpoints, http, config }
    }

    /// A client for the healthy instances of `service` in `registry`, followed as they
    /// change (must be called inside a Tokio runtime).
    pub fn discover(registry: &dyn Registry, service: &str, config: ClientConfig) -> Self {
        let endpoints =
            Endpoints::discovered(service, registry.watch(service), config.pool.clone());
        Self::new(service, endpoints, config)
    }

    /// The name of the service called.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The pool, for breaker states and in-flight counts.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Sends `request` (only its path and query are used: the instance supplies
    /// scheme and authority) and returns the response of the last attempt, whatever
    /// its status.
    ///
    /// A connect error, a timeout or a 502/503/504 is retried on another instance when
    /// the call is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any method
    /// with an `Idempotency-Key` header), `max_retries` is not reached and the retry
    /// budget allows. Every 5xx, connect error or timeout counts against the
    /// instance's breaker.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, ClientError> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
        if !path.starts_with('/') {
            return Err(self.invalid(format!("path {path:?} does not start with /")));
        }
        let mut headers = parts.headers;
        propagate_context(&mut headers);
        let retry_allowed = is_idempotent(&parts.method, &headers);
        let budget = &self.config.retry_budget;
        budget.deposit();

        let mut tried: Vec<String> = Vec::new();
        let mut pick = self.endpoints.pick()?;
        let mut retries = 0;
        loop {
            let instance = pick.base_url().to_owned();
            let outcome = self.attempt(pick, &parts.method, &path, &headers, &body).await;
            let retryable = match &outcome {
                Ok(response) => is_retryable_status(response.status()),
                Err(error) => error.is_retryable(),
            };
            if !retryable
                || !retry_allowed
                || retries >= self.config.max_retries
                || !budget.withdraw()
            {
                return outcome;
            }
            tried.push(instance);
            // Nothing left to try: the last outcome says more than the pool's refusal.
            let Ok(next) = self.endpoints.pick_excluding(&tried) else { return outcome };
            pick = next;
            retries += 1;
            tracing::debug!(service = %self.service, instance = pick.base_url(), retries, "retrying");
        }
    }

    /// One attempt on `pick`, reporting its outcome to the breaker.
    async fn attempt(
        &self,
        pick: Pick,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response<Bytes>, ClientError> {
        let url = format!("{}{path}", pick.base_url());
        let call = self
            .http
            .request(method.clone(), url)
            .headers(headers.clone())
            .body(body.clone())
            .send();
        let exchange = async {
            let response = call.await?;
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut out = Response::new(body);
            out.extensions_mut().insert(ServedBy(pick.base_url().to_owned()));
            *out.status_mut() = status;
            *out.version_mut() = version;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        };
        let timeout = self.config.timeout;
        let instance = || pick.base_url().to_owned();
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) if source.is_connect() => Err(ClientError::Connect {
                service: self.service.to_string(),
                instance: instance(),
                source,
            }),
            Ok(Err(source)) if source.is_timeout() => Err(ClientError::Timeout {
                service: self.service.to_string(),
                instance: instance(),
                timeout,
            }),
            Ok(Err(source)) => Err(ClientError::Transport {
                service: self.service.to_string(),
                instance: instance(),
                source,
            }),
            Err(_elapsed) => Err(ClientError::Timeout {
                service: self.service.to_string(),
                instance: instance(),
                timeout,
            }),
        };
        match &result {
            Ok(response) if !response.status().is_server_error() => pick.success(),
            _ => pick.failure(),
        }
        result
    }

    /// GETs `path` and decodes a 2xx JSON answer; any other status is
    /// [`ClientError::Upstream`].
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self.build(Method::GET, path, Bytes::new(), HeaderMap::new())?;
        self.json_answer(request).await
    }

    /// POSTs `body` as JSON to `path` and decodes a 2xx JSON answer. Not retried
    /// unless `idempotency_key` is given (sent as `Idempotency-Key`).
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|source| ClientError::Json { service: self.service.to_string(), source })?;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                self.invalid(format!("idempotency key {key:?} is not a header value"))
            })?;
            headers.insert(IDEMPOTENCY_KEY, value);
        }
        let request = self.build(Method::POST, path, Bytes::from(body), headers)?;
        self.json_answer(request).await
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<Request<Bytes>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .map_err(|e| self.invalid(e.to_string()))?;
        *request.headers_mut() = headers;
        request
            .headers_mut()
            .insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        Ok(request)
    }

    async fn json_answer<T: DeserializeOwned>(
        &self,
        request: Request<Bytes>,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(ClientError::Upstream {
                service: self.service.to_string(),
                instance: response
                    .extensions()
                    .get::<ServedBy>()
                    .map(|s| s.0.clone())
                    .unwrap_or_default(),
                status: response.status(),
                body: String::from_utf8_lossy(response.body()).into_owned(),
            });
        }
        serde_json::from_slice(response.body())
            .map_err(|source| ClientError::Json { service: self.service.to_string(), source })
    }

    fn invalid(&self, reason: String) -> ClientError {
        ClientError::InvalidRequest { service: self.service.to_string(), reason }
    }
}

/// Whether a request may be sent twice without harm.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// Adds `traceparent` (a child span of the current trace), `tracestate`,
/// `x-request-id` (the correlation id), `x-keel-subject` (the actor) and
/// `x-keel-identity` (the caller's signed identity, which services verify) from
/// [`keel_bus::layer::current_context`], leaving any the caller set.
fn propagate_context(headers: &mut HeaderMap) {
    let Some(context) = keel_bus::layer::current_context() else { return };
    let trace = context.trace.filter(|_| !headers.contains_key(&TRACEPARENT)).map(|t| t.child());
    let mut set = |name: HeaderName, value: Option<String>| {
        if let Some(value) = value
            && !headers.contains_key(&name)
            && let Ok(value) = HeaderValue::try_from(value)
        {
            headers.insert(name, value);
        }
    };
    if let Some(child) = trace {
        set(TRACEPARENT, Some(child.traceparent()));
        set(TRACESTATE, child.tracestate().map(str::to_owned));
    }
    set(REQUEST_ID, context.correlation_id);
    set(SUBJECT, context.actor);
    set(IDENTITY, context.credentials);
}
