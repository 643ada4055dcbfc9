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
}
