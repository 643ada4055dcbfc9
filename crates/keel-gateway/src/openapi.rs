//! The one OpenAPI document of everything the gateway routes to, served at the
//! configured `openapi_path` (`/api/openapi.json` in `keel up`).
//!
//! Each routed service describes itself and serves its document at
//! [`SERVICE_PATH`] on its own listener; on each request for the merged document the
//! gateway asks one instance of every routed service for it, through the route's
//! discovered pool (so it works the same whether the services run in the gateway's
//! process, as in `keel up`, or as separate processes found through Consul, and the
//! document always matches the code the instances run). It then keeps only the paths
//! it routes, adds what it answers itself (429 over the rate limit, 502/503/504 when
//! the upstream fails, 401 where the route needs credentials, 413 over the body
//! limit), states the security of each operation from the route's auth mode, and
//! adds its own admin endpoints under `/_keel`. A service that answers 404 has no
//! document and is left out; one that cannot be asked makes the answer a 503 naming
//! it (a document silently missing a service would look complete).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use keel_client::{ClientConfig, ServiceClient};
use keel_service::openapi::{ADMIN_TOKEN, BEARER_JWT, SERVICE_PATH, merge, problem_response};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::config::{ADMIN_PREFIX, AuthMode};
use crate::route::{InstanceInfo, Route, RouteInfo, RouteTable};

/// How long one service may take to hand over its document.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The document of everything `routes` lead to, served at `path`; `admin_token`
/// says whether the admin endpoints ask for the admin token. `Err` names the service
/// whose document could not be fetched or read.
pub(crate) async fn document(
    routes: &RouteTable,
    path: &str,
    admin_token: bool,
) -> Result<OpenApi, String> {
    let mut documents = Vec::new();
    let mut asked = BTreeSet::new();
    for route in routes.iter() {
        let name = route.endpoints.name().to_owned();
        if asked.insert(name.clone())
            && let Some(document) = fetch(route, &name).await?
        {
            documents.push(document);
        }
    }
    let mut merged = merge("Keel", env!("CARGO_PKG_VERSION"), documents);
    merged.info.description = Some(
        "The HTTP APIs behind the Keel gateway, merged from each service's own document. \
         Errors are application/problem+json (RFC 9457); `errors` names each field at fault."
            .to_owned(),
    );
    merged.paths.paths.retain(|p, _| routes.find(p).is_some());
    for (p, item) in &mut merged.paths.paths {
        if let Some(route) = routes.find(p) {
            for (method, operation) in operations(item) {
                through(route, &method, operation);
            }
        }
    }
    add_admin(&mut merged, admin_token);
    let own = OperationBuilder::new()
        .tag("gateway")
        .summary(Some("This document"))
        .description(Some(
            "The OpenAPI document of every API the gateway routes to, fetched from the \
             services on each request.",
        ))
        .response("200", json_response("The OpenAPI 3.1 document", ObjectBuilder::new().into()))
        .response("503", problem_ref("Unavailable"))
        .build();
    merged.paths.paths.insert(path.to_owned(), PathItem::new(HttpMethod::Get, own));
    Ok(merged)
}

/// The document one route's service serves, `None` if it serves none (404).
async fn fetch(route: &Route, name: &str) -> Result<Option<OpenApi>, String> {
    let config = ClientConfig { timeout: FETCH_TIMEOUT, max_retries: 1, ..ClientConfig::default() };
    let client = ServiceClient::new(name, route.endpoints.clone(), config);
    let request = Request::builder()
        .method(Method::GET)
        .uri(SERVICE_PATH)
        .body(Bytes::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .send(request)
        .await
        .map_err(|e| format!("the OpenAPI document of `{name}` cannot be fetched: {e}"))?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(None),
        status if status.is_success() => serde_json::from_slice(response.body())
            .map(Some)
            .map_err(|e| format!("the OpenAPI document of `{name}` is not valid: {e}")),
        status => Err(format!("the OpenAPI document of `{name}`: the service answered {status}")),
    }
}

/// The operations of `item`, with their methods.
fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::POST, &mut item.post),
        (Method::PUT, &mut item.put),
        (Method::PATCH, &mut item.patch),
        (Method::DELETE, &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|o| (method, o)))
    .collect()
}

/// `operation` as the gateway exposes it on `route`: its security from the route's
/// auth mode and the answers the gateway gives itself.
fn through(route: &Route, method: &Method, operation: &mut Operation) {
    let needs = route.needs_auth(method);
    operation.security = match route.config.auth {
        AuthMode::None => None,
        _ if needs => Some(vec![SecurityRequirement::new(BEARER_JWT, Vec::<String>::new())]),
        // Reads of a `write` route are open, and credentials they carry are checked.
        _ => Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new(BEARER_JWT, Vec::<String>::new()),
        ]),
    };
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, name: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| problem_ref(name));
    };
    if route.config.auth != AuthMode::None {
        add("401", "Unauthorized");
    }
    if operation.request_body.is_some() {
        add("413", "PayloadTooLarge");
    }
    if route.limiter.is_some() {
        add("429", "TooManyRequests");
    }
    add("502", "BadGateway");
    add("503", "Unavailable");
    add("504", "GatewayTimeout");
}

fn problem_ref(name: &str) -> RefOr<Response> {
    RefOr::Ref(Ref::from_response_name(name))
}

fn json_response(description: &str, schema: RefOr<utoipa::openapi::Schema>) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

/// The admin endpoints (`/_keel/health` open; the others behind the admin token, or
/// loopback clients only without one).
fn add_admin(document: &mut OpenApi, admin_token: bool) {
    let security =
        || admin_token.then(|| vec![SecurityRequirement::new(ADMIN_TOKEN, Vec::<String>::new())]);
    let guarded = |builder: OperationBuilder| {
        let builder = builder.tag("admin");
        let mut operation = if admin_token {
            builder.response("401", problem_ref("Unauthorized"))
        } else {
            builder.response("403", problem_ref("Forbidden"))
        }
        .build();
        operation.security = security();
        operation
    };
    let health = ObjectBuilder::new()
        .property("status", ObjectBuilder::new().schema_type(Type::String))
        .property("routes", ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
        .required("status")
        .required("routes");
    let health = OperationBuilder::new()
        .tag("admin")
        .summary(Some("Liveness of the gateway"))
        .description(Some(
            "Open to anyone (for load balancers): says nothing but `ok` and the number of routes.",
        ))
        .response("200", json_response("The gateway is up", health.into()))
        .build();
    let routes = OperationBuilder::new().summary(Some("The routes and their instances")).response(
        "200",
        json_response(
            "Every route, longest prefix first, with the instances it sends to",
            ArrayBuilder::new().items(Ref::from_schema_name("RouteInfo")).into(),
        ),
    );
    let text = ObjectBuilder::new().schema_type(Type::String);
    let metrics = OperationBuilder::new()
        .summary(Some("Prometheus metrics"))
        .description(Some(
            "The process's series in the Prometheus text format (see docs/metrics.md).",
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The metrics")
                .content("text/plain", ContentBuilder::new().schema(Some(text)).build())
                .build(),
        )
        .response("404", problem_response("Another metrics recorder is installed in this process"));
    let paths = &mut document.paths.paths;
    paths.insert(format!("{ADMIN_PREFIX}/health"), PathItem::new(HttpMethod::Get, health));
    paths.insert(format!("{ADMIN_PREFIX}/routes"), PathItem::new(HttpMethod::Get, guarded(routes)));
    paths.insert(
        format!("{ADMIN_PREFIX}/metrics"),
        PathItem::new(HttpMethod::Get, guarded(metrics)),
    );
    let components = document.components.get_or_insert_with(Default::default);
    components.schemas.insert(RouteInfo::name().into_owned(), RouteInfo::schema());
    components.schemas.insert(InstanceInfo::name().into_owned(), InstanceInfo::schema());
    components.schemas.insert(AuthMode::name().into_owned(), AuthMode::schema());
}
