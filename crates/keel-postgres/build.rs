//! Rebuild when a migration is added: `sqlx::migrate!` embeds the directory at compile
//! time, and cargo does not otherwise notice new files there.
#![allow(missing_docs, reason = "a benchmark, example or build script, not a library API")]
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
