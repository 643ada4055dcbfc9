//! The paged read model refuses a parameter it does not take, naming it: a pager
//! that sends `cursor` instead of `after` would otherwise get the first page for ever.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use keel::http::{Service, ServiceConfig};
use keel::registry::InProcessRegistry;
use keel::sql::Db;
use keel_users::{AppState, app, migrate};
use serde_json::Value;

#[tokio::test]
async fn unknown_paging_parameters_are_refused_by_name() {
    let file = std::env::temp_dir().join(format!("keel-users-paging-{}.db", uuid::Uuid::now_v7()));
    let db = Db::connect(&format!("sqlite://{}", file.display())).await.unwrap();
    migrate(&db).await.unwrap();
    let config =
        ServiceConfig::new("users", ([127, 0, 0, 1], 0).into(), Arc::new(InProcessRegistry::new()));
    let running = Service::new(config).router(app(AppState::new(db))).bind().await.unwrap();
    let base = format!("http://{}/api/users/u-1/orders", running.local_addr());
    let http = reqwest::Client::new();
    for (query, field) in
        [("?cursor=abc", "cursor"), ("?limit=2&offset=2", "offset"), ("?limit=x", "limit")]
    {
        let response = http.get(format!("{base}{query}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/problem+json",
            "{query}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["pointer"], field, "{query}: {problem}");
    }
    // The parameters it takes still work (no such user: 404, not 400).
    let response = http.get(format!("{base}?limit=2&after=x")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    running.shutdown();
    running.wait().await.unwrap();
    let _ = std::fs::remove_file(file);
}
