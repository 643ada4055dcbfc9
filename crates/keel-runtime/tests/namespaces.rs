//! Namespaces (`KEEL_NAMESPACE`) against the real services: two systems with
//! different namespaces on one RabbitMQ, one Consul and one PostgreSQL database never
//! see each other's events, dead letters or instances, although they use the very
//! same topic, group, service and instance names. Needs the `integration` feature.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_core::bus::DeadLetterReason;
use keel_core::{Bus, CloudEvent, ExpectedVersion, Namespace, StreamId, SubscriptionSpec};
use keel_registry::{Instance, Registration, Registry};
use keel_runtime::{Config, open_bus};
use keel_sql::Db;
use keel_testkit::util::{seq_event, seq_of};

fn amqp_url() -> String {
    let url = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    // The test's queues go away a minute after it ends.
    format!("{url}?queue_expires_ms=60000")
}

fn consul_url() -> String {
    std::env::var("KEEL_CONSUL_URL").unwrap_or_else(|_| "http://127.0.0.1:8500".to_owned())
}

/// A namespace no other run uses: `prefix` and 16 random hex digits.
fn unique_namespace(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}{}", &id[16..])
}

/// One deployment: what a process of namespace `namespace` opens from its `KEEL_*`
/// settings.
struct System {
    config: Config,
    db: Db,
    bus: Arc<dyn Bus>,
    registry: Arc<dyn Registry>,
}

async fn system(namespace: &str, database_url: &str) -> System {
    let (amqp, consul) = (amqp_url(), consul_url());
    let env = |key: &str| match key {
        "KEEL_NAMESPACE" => Some(namespace.to_owned()),
        "KEEL_DATABASE_URL" => Some(database_url.to_owned()),
        "KEEL_BUS_URL" => Some(amqp.clone()),
        "KEEL_CONSUL_URL" => Some(consul.clone()),
        _ => None,
    };
    let config = Config::from_sources(Path::new("/nonexistent/keel.toml"), env).unwrap();
    assert_eq!(config.namespace.as_str(), Some(namespace));
    let db = Db::connect_in(&config.database_url, &config.namespace).await.unwrap();
    let bus = open_bus(config.bus_url.as_deref(), &config.namespace).await.unwrap().unwrap();
    let registry =
        keel_registry::connect_in(config.consul_url.as_deref(), &config.namespace).await.unwrap();
    System { config, db, bus, registry }
}

async fn next_seq(subscription: &mut Box<dyn keel_core::Subscription>) -> keel_core::Delivery {
    tokio::time::timeout(Duration::from_secs(30), subscription.next())
        .await
        .expect("a delivery within 30 s")
        .expect("the subscription is open")
        .expect("a delivery, not an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_share_rabbitmq_consul_and_postgres_without_seeing_each_other() {
    let database_url = keel_testkit::postgres::fresh_database("namespaces").await;
    let (ns_a, ns_b) = (unique_namespace("a"), unique_namespace("b"));
    let a = system(&ns_a, &database_url).await;
    let b = system(&ns_b, &database_url).await;

    // The store: one database, a schema each, each log its own.
    let stream = StreamId::new("note-1").unwrap();
    let event = CloudEvent::builder("note.added", "/notes").subject("note-1").build().unwrap();
    a.db.log().append(&stream, ExpectedVersion::NoStream, &[event]).await.unwrap();
    assert_eq!(a.db.log().head().await.unwrap().0, 1);
    assert_eq!(b.db.log().head().await.unwrap().0, 0, "B's log does not have A's event");
    let event = CloudEvent::builder("note.added", "/notes").subject("note-1").build().unwrap();
    b.db.log().append(&stream, ExpectedVersion::NoStream, &[event]).await.unwrap();
    let admin = sqlx::PgPool::connect(&database_url).await.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables
         WHERE table_name = 'keel_events' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut expected = vec![ns_a.clone(), ns_b.clone()];
    expected.sort();
    assert_eq!(schemas, expected, "the log's table is in each namespace's schema, not public");

    // Leases (one active relay, projection runner, log-bus feeder per name) are per
    // namespace: both hold theirs at once.
    let lease_a = a.db.log().try_lease("relay:main").await.unwrap().expect("A's lease");
    let lease_b = b.db.log().try_lease("relay:main").await.unwrap();
    assert!(lease_b.is_some(), "B's relay is not held off by A's");
    assert!(a.db.log().try_lease("relay:main").await.unwrap().is_none(), "but A's is A's");
    lease_a.release().await;
    if let Some(lease) = lease_b {
        lease.release().await;
    }

    // The bus: the same topic and group names in both namespaces.
    let spec = || SubscriptionSpec::new("note", "readers").prefetch(8);
    let mut in_a = a.bus.subscribe(spec()).await.unwrap();
    let mut in_b = b.bus.subscribe(spec()).await.unwrap();
    a.bus.publish("note", &[seq_event(1, Some("k"))]).await.unwrap();
    b.bus.publish("note", &[seq_event(2, Some("k"))]).await.unwrap();
    let delivered_in_a = next_seq(&mut in_a).await;
    let delivered_in_b = next_seq(&mut in_b).await;
    assert_eq!(seq_of(delivered_in_a.event().unwrap()), 1, "A gets A's event");
    assert_eq!(seq_of(delivered_in_b.event().unwrap()), 2, "B gets B's event, and not A's first");
    delivered_in_b.ack().await.unwrap();
    let reason = DeadLetterReason { error: "refused in A".into(), attempts: 1 };
    delivered_in_a.dead_letter(reason).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), in_b.next()).await;
    assert!(quiet.is_err(), "nothing else arrives in B's group: {quiet:?}");

    // Dead letters: A's are A's only, named as A's code names them.
    let in_a_dlq = a.bus.list("note", "readers", 10).await.unwrap();
    assert_eq!(in_a_dlq.len(), 1, "{in_a_dlq:?}");
    assert_eq!((in_a_dlq[0].topic.as_str(), in_a_dlq[0].group.as_str()), ("note", "readers"));
    assert_eq!(in_a_dlq[0].reason, "refused in A");
    assert!(b.bus.list("note", "readers", 10).await.unwrap().is_empty(), "B has no dead letters");
    assert_eq!(b.bus.purge("note", "readers").await.unwrap(), 0);
    assert_eq!(a.bus.list("note", "readers", 10).await.unwrap().len(), 1, "B's purge left A's");
    // The depth gauges count each namespace's own queues (NamespacedBus forwards depth).
    let depth_a = a.bus.depth("note", "readers").await.unwrap();
    assert_eq!(depth_a.dead_letters, Some(1), "A's dead letter: {depth_a:?}");
    let depth_b = b.bus.depth("note", "readers").await.unwrap();
    assert_eq!(depth_b.dead_letters, Some(0), "B has none: {depth_b:?}");

    // The registry: the same service name and instance id, registered in both.
    let service = format!("notes-{}", &ns_a[1..9]);
    let register = |registry: Arc<dyn Registry>, port: u16| {
        let instance = Instance {
            id: format!("{service}-1"),
            service: service.clone(),
            address: "127.0.0.1".into(),
            port,
            tags: Vec::new(),
            meta: Default::default(),
        };
        async move {
            registry.register(&Registration { instance, check: None }).await.unwrap();
        }
    };
    register(a.registry.clone(), 1001).await;
    register(b.registry.clone(), 1002).await;
    let seen_by_a = a.registry.healthy(&service).await.unwrap();
    let seen_by_b = b.registry.healthy(&service).await.unwrap();
    let ports = |seen: &[Instance]| seen.iter().map(|i| i.port).collect::<Vec<_>>();
    assert_eq!(ports(&seen_by_a), [1001], "A lists only its own instance");
    assert_eq!(ports(&seen_by_b), [1002], "B lists only its own instance");
    assert_eq!(seen_by_a[0].service, service, "discovery answers the service's own name");
    assert_eq!(seen_by_a[0].id, format!("{service}-1"));
    let default = keel_registry::connect(Some(&consul_url())).await.unwrap();
    assert!(default.healthy(&service).await.unwrap().is_empty(), "nor does the default see them");
    assert!(a.registry.is_registered(&format!("{service}-1")).await.unwrap());
    a.registry.deregister(&format!("{service}-1")).await.unwrap();
    assert!(a.registry.healthy(&service).await.unwrap().is_empty());
    assert_eq!(ports(&b.registry.healthy(&service).await.unwrap()), [1002], "A's went alone");
    b.registry.deregister(&format!("{service}-1")).await.unwrap();

    let _ = (a.config, b.config);
    in_a.close().await.unwrap();
    in_b.close().await.unwrap();
    a.bus.purge("note", "readers").await.unwrap();
}

/// The default namespace keeps the log where it was before namespaces: in the
/// connection's own schema (`public`).
#[tokio::test]
async fn the_default_namespace_changes_no_name() {
    let database_url = keel_testkit::postgres::fresh_database("namespaces_default").await;
    let db = Db::connect_in(&database_url, &Namespace::none()).await.unwrap();
    drop(db);
    let admin = sqlx::PgPool::connect(&database_url).await.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'keel_events'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(schemas, ["public"]);
}
