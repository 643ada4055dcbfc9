//! Declaring exchanges, queues and bindings. Every declaration is idempotent and is
//! repeated whenever a channel is (re)opened, so a broker that lost or never had the
//! topology gets it back.

use keel_core::{BusError, SubscriptionSpec};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpConfig, QueueType};
use crate::error::from_lapin;
use crate::headers::text;
use crate::names::{DEAD_LETTER_EXCHANGE, GroupNames};

const DURABLE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

fn name(value: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(value)
        .map_err(|_| BusError::Config(format!("name `{value}` is longer than 255 bytes")))
}

/// The durable topic exchange of a topic.
pub(crate) async fn declare_topic_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), BusError> {
    channel
        .exchange_declare(
            name(exchange)?,
            ExchangeKind::Topic,
            DURABLE_EXCHANGE,
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin(&format!("declaring exchange `{exchange}`"), &e))
}

/// Arguments every queue of a group gets: its type and, if configured, `x-expires`.
fn base_arguments(config: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text(config.queue_type.as_str()));
    if let Some(expires) = config.queue_expires {
        let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
    args
}

async fn declare_queue(channel: &Channel, queue: &str, args: FieldTable) -> Result<(), BusError> {
    channel
        .queue_declare(name(queue)?, DURABLE_QUEUE, args)
        .await
        .map(drop)
        .map_err(|e| from_lapin(&format!("declaring queue `{queue}`"), &e))
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), BusError> {
    channel
        .queue_bind(
            name(queue)?,
            name(exchange)?,
            name(key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin(&format!("binding `{queue}` to `{exchange}` for `{key}`"), &e))
}

/// The dead-letter exchange and the group's dead-letter queue, bound by its name.
pub(crate) async fn declare_dead_letters(
    channel: &Channel,
    names: &GroupNames,
    config: &AmqpConfig,
) -> Result<(), BusError> {
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Direct,
            DURABLE_EXCHANGE,
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin("declaring the dead-letter exchange", &e))?;
    declare_queue(channel, &names.dlq, base_arguments(config)).await?;
    bind(channel, &names.dlq, DEAD_LETTER_EXCHANGE, &names.dlq).await
}

/// Everything a group member needs: the topic exchange, the dead letters, and the
/// group queue bound for the subscribed types (`#`, every type, when none are given).
/// The group queue dead-letters into the group's dead-letter queue, so messages the
/// broker itself gives up on (a delivery limit set by policy, say) are kept too.
pub(crate) async fn declare_group(
    channel: &Channel,
    names: &GroupNames,
    spec: &SubscriptionSpec,
    config: &AmqpConfig,
) -> Result<(), BusError> {
    declare_topic_exchange(channel, &names.exchange).await?;
    declare_dead_letters(channel, names, config).await?;
    let mut args = base_arguments(config);
    args.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
    args.insert("x-dead-letter-routing-key".into(), text(names.dlq.as_str()));
    if config.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    declare_queue(channel, &names.queue, args).await?;
    if spec.types.is_empty() {
        bind(channel, &names.queue, &names.exchange, "#").await
    } else {
        for ty in &spec.types {
            bind(channel, &names.queue, &names.exchange, ty).await?;
        }
        Ok(())
    }
}

/// The retry queue of one delay bucket: every message in it waits `bucket_ms`, then
/// the broker dead-letters it (through the default exchange) back into the group
/// queue. One fixed TTL per queue means no message ever waits behind a longer one.
/// Quorum retry queues dead-letter at-least-once, so a restart loses no retry.
pub(crate) async fn declare_retry_queue(
    channel: &Channel,
    names: &GroupNames,
    bucket_ms: u64,
    config: &AmqpConfig,
) -> Result<(), BusError> {
    let mut args = base_arguments(config);
    let ttl = i64::try_from(bucket_ms).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(names.queue.as_str()));
    if config.queue_type == QueueType::Quorum {
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
    if let Some(expires) = config.queue_expires {
        // An idle retry queue must outlive the messages it holds.
        let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms.max(ttl.saturating_mul(2))));
    }
    declare_queue(channel, &names.retry_queue(bucket_ms), args).await
}
