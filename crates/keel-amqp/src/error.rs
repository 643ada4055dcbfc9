//! How lapin's errors become [`BusError`]s: whether the caller may retry is the one
//! fact that matters, so a broken connection or channel is always
//! [`BusError::Connection`] (retryable), while the broker refusing a declaration or an
//! operation for a reason that will not go away is [`BusError::Config`].

use keel_core::BusError;
use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Converts a lapin error met while doing `what` (for the message).
pub(crate) fn from_lapin(what: &str, error: &lapin::Error) -> BusError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => {
            let text = format!("{what}: {} ({})", amqp.get_message(), amqp.get_id());
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                    BusError::Config(format!(
                        "{text}; an existing queue or exchange has other settings (queue_type, \
                     single_active_consumer, queue_expires_ms?): delete it or match them"
                    ))
                }
                AMQPErrorKind::Soft(
                    AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::NOTFOUND
                    | AMQPSoftError::RESOURCELOCKED,
                )
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH) => {
                    BusError::Config(text)
                }
                AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE | AMQPSoftError::NOROUTE) => {
                    BusError::Rejected(text)
                }
                _ => BusError::Connection(text),
            }
        }
        _ => BusError::Connection(format!("{what}: {error}")),
    }
}

/// Converts a lapin error met while publishing a message or awaiting its confirm.
/// RabbitMQ answers a message it will never take (larger than its
/// `max_message_size`, a bad `expiration`) by closing the channel with 406
/// PRECONDITION_FAILED: that belongs to the message, so it is
/// [`BusError::Unpublishable`]. (311 CONTENT_TOO_LARGE means "not at the present
/// time" in AMQP 0-9-1, so it stays a retryable-by-the-relay [`BusError::Rejected`].)
pub(crate) fn from_lapin_publish(what: &str, error: &lapin::Error) -> BusError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)) =>
        {
            BusError::Unpublishable(format!(
                "{what}: the broker refused the message: {} ({})",
                amqp.get_message(),
                amqp.get_id()
            ))
        }
        _ => from_lapin(what, error),
    }
}

/// Whether the error means the thing asked for does not exist (404 NOT_FOUND).
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

#[cfg(test)]
mod tests {
    use lapin::protocol::AMQPError;

    use super::*;

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, "broker says no".into())).into()
    }

    #[test]
    fn broken_links_are_retryable_refusals_are_not() {
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(from_lapin("publishing", &io).is_retryable());
        let forced = protocol(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert!(from_lapin("consuming", &forced).is_retryable());
        let changed = from_lapin(
            "declaring queue `q`",
            &protocol(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)),
        );
        assert!(matches!(&changed, BusError::Config(m) if m.contains("queue `q`")), "{changed}");
        let missing = protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND));
        assert!(matches!(from_lapin("reading", &missing), BusError::Config(_)));
        assert!(is_not_found(&missing));
        assert!(!is_not_found(&forced));
        let too_big = protocol(AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE));
        assert!(matches!(from_lapin("publishing", &too_big), BusError::Rejected(_)));
    }

    #[test]
    fn a_message_the_broker_refuses_at_publish_is_unpublishable() {
        // RabbitMQ's answer to a message over `max_message_size`.
        let over = protocol(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED));
        let err = from_lapin_publish("publishing", &over);
        assert!(err.is_unpublishable(), "{err}");
        // While declaring, the same code means other settings: not the message's fault.
        assert!(!from_lapin("declaring queue `q`", &over).is_unpublishable());
        for kind in [
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
            AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
        ] {
            let err = from_lapin_publish("publishing", &protocol(kind));
            assert!(!err.is_unpublishable(), "{err}");
        }
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(from_lapin_publish("publishing", &io).is_retryable());
    }
}
