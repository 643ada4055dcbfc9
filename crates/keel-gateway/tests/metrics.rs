//! Metric labels come from closed sets (issue 17 item 4): invented methods and
//! unmatched paths add no series to `/_keel/metrics`. A file of its own, so that no
//! other test's gateway shares the process's recorder.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, gateway, upstream};
use keel_gateway::{GatewayConfig, RouteConfig};

/// The series (sample lines) of the metrics page.
async fn series(gw: &str) -> Vec<String> {
    let page =
        client().get(format!("{gw}/_keel/metrics")).send().await.unwrap().text().await.unwrap();
    page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(str::to_owned).collect()
}

/// Requests with the invented method `M{i}` to a route, to no route and to a route
/// that does not take the method.
async fn hostile(gw: &str, i: usize) {
    let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
    for path in
        [format!("/api/users/{i}?q{i}={i}"), format!("/nowhere/{i}"), format!("/only-get/{i}")]
    {
        let response =
            client().request(method.clone(), format!("{gw}{path}")).send().await.unwrap();
        assert!(!response.status().is_server_error(), "{path}: {}", response.status());
    }
}

#[tokio::test]
async fn invented_methods_and_unmatched_paths_add_no_series() {
    let up = upstream().await;
    let gw = gateway(
        GatewayConfig::default()
            .route(RouteConfig::to_upstreams("/api", vec![up.url()]))
            .route(RouteConfig::to_upstreams("/only-get", vec![up.url()]).methods(&["GET"])),
    )
    .await;
    // One round first, so that every label value in use exists before counting.
    hostile(&gw, 0).await;
    let get = client().get(format!("{gw}/nowhere")).send().await.unwrap();
    assert_eq!(get.status(), 404);
    let before = series(&gw).await;
    for i in 1..200 {
        hostile(&gw, i).await;
    }
    let after = series(&gw).await;
    let names = |lines: &[String]| -> Vec<String> {
        let mut names: Vec<String> = lines
            .iter()
            .map(|l| l.rsplit_once(' ').map_or(l.clone(), |(series, _)| series.to_owned()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&after), names(&before), "series were added");
    assert!(
        after.iter().any(|l| l.contains("route=\"unmatched\"")),
        "unmatched requests are not counted: {after:#?}"
    );
}
