//! The aggregate: state folded from its stream, commands decided into events.

use keel_core::{DecodeError, EventSet, StreamId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An event-sourced aggregate. Its state is [`Default`] before its first event and
/// [`apply`](Aggregate::apply) folds each event of its stream into it; a command is
/// decided by [`handle`](Aggregate::handle) into the events that come next (none is
/// fine) or refused with the aggregate's own error.
///
/// The state is serialized for snapshots (JSON through serde). Change
/// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) whenever a stored snapshot would
/// no longer be right: the state's shape changed, `apply` now folds differently, or an
/// upcaster changes how old events read. Snapshots of another version are ignored and
/// the state is folded from the events again (the next command stores a new one).
///
/// An aggregate that only reads its stream (no commands) can say
/// `type Command = std::convert::Infallible` and `match *command {}` in `handle`.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stream category: aggregate `id` lives in stream `CATEGORY-id` (the category
    /// is the part of a stream id before its first `-`, so it has no `-` itself).
    const CATEGORY: &'static str;
    /// The format of this aggregate's snapshots.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The events of the stream: one [`keel_core::Event`] type, or several gathered
    /// with [`event_set!`](crate::event_set).
    type Event: EventSet;
    /// What callers ask of the aggregate.
    type Command: Send + Sync;
    /// Why the aggregate refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state. It cannot fail: the event happened.
    fn apply(&mut self, event: &Self::Event);

    /// Decides `command` on the current state: the events to append, or a refusal. It
    /// may run more than once for one call (after a version conflict, on the state
    /// that won), so it only decides; effects go in the events.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The stream of aggregate `id`: `CATEGORY-id`.
    fn stream_id(id: &str) -> Result<StreamId, DecodeError> {
        StreamId::new(format!("{}-{id}", Self::CATEGORY))
    }
}

/// An enum of event types as one [`keel_core::EventSet`], for an aggregate whose
/// stream holds several types. Each variant wraps one [`keel_core::Event`] type;
/// `From` each type is implemented too, so `handle` can write `Added { .. }.into()`.
///
/// ```
/// use keel_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
/// #[event(type = "account.opened")]
/// pub struct Opened { pub owner: String }
///
/// #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
/// #[event(type = "account.deposited")]
/// pub struct Deposited { pub cents: i64 }
///
/// keel_aggregate::event_set! {
///     /// Everything that happens to an account.
///     #[derive(Debug, Clone, PartialEq)]
///     pub enum AccountEvent {
///         Opened(Opened),
///         Deposited(Deposited),
///     }
/// }
///
/// use keel_core::EventSet;
/// assert_eq!(AccountEvent::types(), ["account.opened", "account.deposited"]);
/// let event: AccountEvent = Deposited { cents: 5 }.into();
/// assert_eq!(event.event_type(), "account.deposited");
/// ```
#[macro_export]
macro_rules! event_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident($ty:ty)),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant($ty)),+
        }

        impl $crate::__private::keel_core::EventSet for $name {
            fn types() -> ::std::vec::Vec<&'static str> {
                let mut types = ::std::vec::Vec::new();
                $(types.extend(<$ty as $crate::__private::keel_core::EventSet>::types());)+
                types
            }
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(e) => $crate::__private::keel_core::EventSet::event_type(e)),+
                }
            }
            fn schema_version(&self) -> u32 {
                match self {
                    $(Self::$variant(e) => $crate::__private::keel_core::EventSet::schema_version(e)),+
                }
            }
            fn partition_key(&self) -> ::std::option::Option<::std::string::String> {
                match self {
                    $(Self::$variant(e) => $crate::__private::keel_core::EventSet::partition_key(e)),+
                }
            }
            fn to_json(
                &self,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::__private::serde_json::Error> {
                match self {
                    $(Self::$variant(e) => $crate::__private::keel_core::EventSet::to_json(e)),+
                }
            }
            fn from_json(
                ty: &str,
                version: u32,
                data: &[u8],
            ) -> ::std::result::Result<
                ::std::option::Option<Self>,
                $crate::__private::keel_core::DecodeError,
            > {
                $(
                    if let ::std::option::Option::Some(e) =
                        <$ty as $crate::__private::keel_core::EventSet>::from_json(ty, version, data)?
                    {
                        return ::std::result::Result::Ok(::std::option::Option::Some(Self::$variant(e)));
                    }
                )+
                ::std::result::Result::Ok(::std::option::Option::None)
            }
        }

        $(
            impl ::std::convert::From<$ty> for $name {
                fn from(event: $ty) -> Self {
                    Self::$variant(event)
                }
            }
        )+
    };
}
