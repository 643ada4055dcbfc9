//! Keel facade.
