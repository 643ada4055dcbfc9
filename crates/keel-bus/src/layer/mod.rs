//! Middleware for handlers, as tower layers:
//! `ServiceBuilder::new().layer(TraceLayer::new()).layer(TimeoutLayer::new(d)).layer(RetryLayer::new(b, 3)).service(h)`.

mod context;
mod inbox;
mod retry;
mod timeout;

pub use context::{EventContext, TraceLayer, TraceService, current_context, with_context};
pub use inbox::{Inbox, InboxFn, InboxLayer, InboxService, MemoryInbox, MemoryInboxTx, inbox_fn};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutLayer};

use std::future::Future;
use std::pin::Pin;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
