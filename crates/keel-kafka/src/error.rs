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
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::MessageBatchTooLarge
        | C::InvalidRecord
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
        assert!(matches!(
            from_code("publish", RDKafkaErrorCode::MessageSizeTooLarge),
            BusError::Rejected(_)
        ));
        assert!(from_code("publish", RDKafkaErrorCode::MessageTimedOut).is_retryable());
        assert!(from_code("publish", RDKafkaErrorCode::BrokerTransportFailure).is_retryable());
        let err = from_kafka("create", &KafkaError::ClientCreation("bad".into()));
        assert!(matches!(err, BusError::Config(_)), "{err}");
    }
}
