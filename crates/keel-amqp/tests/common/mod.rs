//! Helpers shared by the integration tests: the broker's address, buses with test
//! settings, a plain lapin client (a producer that is not Keel), and `rabbitmqctl`
//! with a guard that always starts the broker again.

#![allow(dead_code, unreachable_pub)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_amqp::{AmqpBus, AmqpConfig};
use keel_core::{Bus, BusError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

/// The broker the tests use: `KEEL_TEST_AMQP_URL`, by default the local one.
pub fn url() -> String {
    std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Test settings. Queues expire 30 s after their last use, so the broker deletes each
/// test's queues soon after it ends: deleting a few hundred quorum queues at once
/// stalls RabbitMQ 3.10 for tens of seconds, so a long expiry would land that stall
/// in some later, unrelated test run. Timeouts are generous for the same reason.
pub fn config() -> AmqpConfig {
    AmqpConfig::default()
        .queue_expires(Some(Duration::from_secs(30)))
        .reconnect(Duration::from_millis(50), Duration::from_millis(1000))
        .connect_timeout(Duration::from_secs(60))
        .publish_timeout(Duration::from_secs(60))
        .connection_name("keel-amqp-tests")
}

pub async fn bus() -> AmqpBus {
    bus_with(config()).await
}

/// A bus on the test broker, waiting (polling) while the broker is busy or restarting.
pub async fn bus_with(config: AmqpConfig) -> AmqpBus {
    bus_at(&url(), config).await
}

pub async fn bus_at(url: &str, config: AmqpConfig) -> AmqpBus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match AmqpBus::connect(url, config.clone()).await {
            Ok(bus) => return bus,
            Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("connect to RabbitMQ: {error}"),
        }
    }
}

pub async fn dyn_bus() -> Arc<dyn Bus> {
    Arc::new(bus().await)
}

/// A plain AMQP client connection (not Keel), waiting while the broker is busy.
pub async fn plain_connection() -> Connection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match Connection::connect(&url(), ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(tokio::time::Instant::now() < deadline, "plain connect: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Publishes `body` as a plain AMQP client would, to Keel's exchange for `topic`,
/// confirmed and mandatory.
pub async fn plain_publish(
    topic: &str,
    routing_key: &str,
    properties: BasicProperties,
    body: Bytes,
) -> Result<(), BusError> {
    let connection = plain_connection().await;
    let channel = connection.create_channel().await.map_err(other)?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(other)?;
    let confirm = channel
        .basic_publish(
            format!("keel.{topic}").into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            &body,
            properties,
        )
        .await
        .map_err(other)?
        .await
        .map_err(other)?;
    let _ = connection.close(200, "done".into()).await;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        other => Err(BusError::Rejected(format!("{other:?}"))),
    }
}

fn other(error: lapin::Error) -> BusError {
    BusError::Connection(error.to_string())
}

/// Declares a queue with plain lapin (for tests that need one Keel would not make).
pub async fn plain_queue(name: &str, args: FieldTable) {
    let connection = plain_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions { durable: true, ..Default::default() },
            args,
        )
        .await
        .expect("declare");
    let _ = connection.close(200, "done".into()).await;
}

/// Runs `rabbitmqctl` with `args` (off the async workers); panics when it fails.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || rabbitmqctl_blocking(&owned))
        .await
        .expect("rabbitmqctl task")
}

fn rabbitmqctl_blocking(args: &[String]) -> String {
    let output = Command::new("rabbitmqctl").args(args).output().expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts the broker's application again when dropped, whatever happened meanwhile,
/// so a failing test never leaves the machine without RabbitMQ.
pub struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl").args(["await_startup", "--timeout", "120"]).output();
    }
}

/// `rabbitmqctl stop_app`; the returned guard (or [`start_broker`]) starts it again.
pub async fn stop_broker() -> StartAgain {
    let guard = StartAgain;
    rabbitmqctl(&["stop_app"]).await;
    guard
}

/// Starts the broker again and waits until it accepts AMQP connections.
pub async fn start_broker(guard: StartAgain) {
    tokio::task::spawn_blocking(move || drop(guard)).await.expect("start task");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(connection) = Connection::connect(&url(), ConnectionProperties::default()).await {
            let _ = connection.close(200, "probe".into()).await;
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "RabbitMQ did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops and starts the broker; returns once it accepts connections again.
pub async fn restart_broker() {
    let guard = stop_broker().await;
    start_broker(guard).await;
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=keel_amqp=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
