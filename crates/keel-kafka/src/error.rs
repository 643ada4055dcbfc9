//! Turning librdkafka's errors into [`BusError`]s.

use keel_core::BusError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Classifies a librdkafka error code: what the caller can do about it.
pub(crate) fn from_code(what: &str, code: RDKafkaErrorCode) -> BusError {
    use RDKafkaErrorCode as C;
    let text = format!("{what}: {code}");
    match code {
        C::QueueFull => BusError::Backpressure(text),
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut => BusError::Timeout(text),
        // The record itself can never be produced: larger than `message.max.bytes`
        // (librdkafka refuses it before sending) or the broker's limit, a record
        // set over the broker's segment size, a record the broker's validation
        // refuses, a timestamp outside the topic's allowed range. The relay
        // dead-letters such a record and goes on.
        C::MessageSizeTooLarge
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidTimestamp => BusError::Unpublishable(text),
        // Refusals of the topic, the account or the setup, which an operator can fix:
        // never blamed on one record.
        C::InvalidMessageSize
        | C::InvalidMessage
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::InvalidRequiredAcks
        | C::PolicyViolation => BusError::Rejected(text),
        C::InvalidConfig
        | C::InvalidArgument
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::UnsupportedVersion
        | C::UnsupportedFeature => BusError::Config(text),
        C::BrokerDestroy | C::Fatal => BusError::Closed,
        _ => BusError::Connection(text),
    }
}

/// Classifies an rdkafka error.
pub(crate) fn from_kafka(what: &str, error: &KafkaError) -> BusError {
    match error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
            BusError::Config(format!("{what}: {error}"))
        }
        KafkaError::Canceled => BusError::Closed,
        other => match other.rdkafka_error_code() {
            Some(code) => from_code(what, code),
            None => BusError::Connection(format!("{what}: {other}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::InvalidTimestamp,
        ] {
            assert!(from_code("publish", code).is_unpublishable(), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::MessageTimedOut,
        ] {
            assert!(!from_code("publish", code).is_unpublishable(), "{code:?}");
        }
        assert!(from_code("publish", RDKafkaErrorCode::MessageTimedOut).is_retryable());
        assert!(from_code("publish", RDKafkaErrorCode::BrokerTransportFailure).is_retryable());
        let err = from_kafka("create", &KafkaError::ClientCreation("bad".into()));
        assert!(matches!(err, BusError::Config(_)), "{err}");
    }
}
