//! OpenAPI pieces every Keel HTTP API shares: the problem+json error schema, the
//! error responses a handler names with `(status = 404, response = NotFound)`, and the
//! security schemes. A service describes its routes with `#[utoipa::path]` and
//! `#[derive(utoipa::OpenApi)]` (its paths as the gateway exposes them, such as
//! `/api/users/{id}`), adding [`Shared`] as a modifier so its document stands alone,
//! and serves it at [`SERVICE_PATH`] with [`route`]; the gateway asks each service it
//! routes to for that document and serves them [`merge`]d (at [`OPENAPI_PATH`] in
//! `keel up`).

use axum::routing::{MethodRouter, get};
use http::{HeaderValue, header};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Type};
use utoipa::{Modify, PartialSchema, ToResponse, ToSchema};

use crate::{PROBLEM_JSON, Problem, ProblemField};

/// Where `keel up`'s gateway serves the merged document of the APIs it routes to.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// Where a service serves its own document, on its own listener (beside `/health`);
/// the gateway does not route it, it asks each service's instances for it.
pub const SERVICE_PATH: &str = "/openapi.json";

/// The handler that serves `document` as JSON (serialized once, here): add it to a
/// service's router at [`SERVICE_PATH`].
pub fn route<S: Clone + Send + Sync + 'static>(document: &OpenApi) -> MethodRouter<S> {
    let body = bytes_of(document);
    get(move || {
        let body = body.clone();
        async move {
            let content_type = HeaderValue::from_static("application/json");
            ([(header::CONTENT_TYPE, content_type)], body)
        }
    })
}

/// `document` as JSON bytes.
pub fn bytes_of(document: &OpenApi) -> axum::body::Bytes {
    // A document made of utoipa's types always serializes (string keys, no floats
    // that are not finite).
    serde_json::to_vec(document).map(Into::into).unwrap_or_default()
}

/// The security scheme of the gateway's JWTs (`Authorization: Bearer <jwt>`), needed
/// on write routes (and the event log's reads) when `KEEL_JWT_SECRET` or
/// `KEEL_JWKS_URL` is set.
pub const BEARER_JWT: &str = "bearer_jwt";

/// The security scheme of the admin surface (`/_keel/*`): `KEEL_ADMIN_TOKEN` as a
/// bearer token; without one, only loopback clients are answered.
pub const ADMIN_TOKEN: &str = "admin_token";

/// A problem+json response described by `description`.
pub fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build()
}

/// The same, with the `Retry-After` header (seconds) it may carry.
fn retry_response(description: &str) -> Response {
    let mut response = problem_response(description);
    response.headers.insert(
        "Retry-After".to_owned(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
                .description(Some("Seconds to wait before retrying."))
                .build(),
        ),
    );
    response
}

macro_rules! problems {
    ($($(#[$doc:meta])* $name:ident => $description:literal, $build:ident;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), $build($description).into())
                }
            }
        )*

        /// Every shared response, by component name.
        fn responses() -> Vec<(&'static str, RefOr<Response>)> {
            vec![$(<$name as ToResponse<'static>>::response()),*]
        }
    };
}

problems! {
    /// 400: a malformed request: a query parameter the route does not take or of the
    /// wrong type, a malformed header, a path segment that is not valid.
    BadRequest => "The request is malformed (the problem's `errors` name the parameter or header).", problem_response;
    /// 401: no identity, or an invalid one, where one is needed.
    Unauthorized => "Credentials are missing or invalid.", problem_response;
    /// 403: an identity that may not do this.
    Forbidden => "The caller may not do this.", problem_response;
    /// 404: nothing at this path.
    NotFound => "No such resource.", problem_response;
    /// 409: the request conflicts with the resource's state.
    Conflict => "The request conflicts with the resource's current state.", problem_response;
    /// 413: a body over the limit.
    PayloadTooLarge => "The body is over the limit (1 MiB).", problem_response;
    /// 415: a body that is not JSON.
    UnsupportedMediaType => "The body must be application/json (UTF-8).", problem_response;
    /// 422: a well-formed body that is not what the route takes, naming each field.
    Unprocessable => "The body is invalid; `errors` names each field by JSON pointer (or the Idempotency-Key reused with another body).", problem_response;
    /// 429: over the route's rate limit (from the gateway).
    TooManyRequests => "Over the rate limit; retry after `Retry-After` seconds.", retry_response;
    /// 502: the upstream service failed (from the gateway).
    BadGateway => "The upstream service failed to answer.", problem_response;
    /// 503: no instance can answer now (from the gateway), or a service this one
    /// needs cannot be reached.
    Unavailable => "Unavailable for now; retry later.", retry_response;
    /// 504: the upstream service took too long (from the gateway).
    GatewayTimeout => "The upstream service did not answer in time.", problem_response;
}

/// The modifier that makes a document stand alone: the `Problem` schemas, the shared
/// responses and the security schemes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(|| ComponentsBuilder::new().build());
        let problem_schemas = [
            (Problem::name().into_owned(), Problem::schema()),
            (ProblemField::name().into_owned(), ProblemField::schema()),
        ];
        for (name, schema) in problem_schemas {
            components.schemas.entry(name).or_insert(schema);
        }
        for (name, response) in responses() {
            components.responses.entry(name.to_owned()).or_insert(response);
        }
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.security_schemes.entry(BEARER_JWT.to_owned()).or_insert_with(|| {
            let mut scheme = bearer(
                "A JWT the gateway verifies (HS256 with KEEL_JWT_SECRET, or a key of KEEL_JWKS_URL); \
                 needed on writes and on the event log when either is set.",
            );
            if let SecurityScheme::Http(http) = &mut scheme {
                http.bearer_format = Some("JWT".to_owned());
            }
            RefOr::T(scheme)
        });
        components.security_schemes.entry(ADMIN_TOKEN.to_owned()).or_insert_with(|| {
            RefOr::T(bearer(
                "KEEL_ADMIN_TOKEN as a bearer token; without one set, the admin surface answers \
                 loopback clients only.",
            ))
        });
    }
}

/// One document of `documents` (their paths, tags and components; an earlier one wins
/// a clash), titled `title`, with the [`Shared`] components.
pub fn merge(title: &str, version: &str, documents: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut merged = OpenApi::new(
        InfoBuilder::new().title(title).version(version).build(),
        utoipa::openapi::Paths::new(),
    );
    for document in documents {
        merged.merge(document);
    }
    Shared.modify(&mut merged);
    merged
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_shared_components_reference_what_they_define() {
        let document = merge("t", "1", []);
        let json = serde_json::to_value(&document).unwrap();
        let components = &json["components"];
        let problem = &components["schemas"]["Problem"];
        assert_eq!(problem["properties"]["type"]["type"], "string", "{problem}");
        assert!(problem["required"].as_array().unwrap().iter().any(|r| r == "status"));
        assert!(components["schemas"]["ProblemField"].is_object());
        let not_found = &components["responses"]["NotFound"];
        assert_eq!(
            not_found["content"][PROBLEM_JSON]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        assert!(components["responses"]["TooManyRequests"]["headers"]["Retry-After"].is_object());
        assert_eq!(components["securitySchemes"][BEARER_JWT]["scheme"], "bearer");
        assert_eq!(components["securitySchemes"][ADMIN_TOKEN]["type"], "http");
    }
}
