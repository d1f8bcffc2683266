//! The capabilities the guest is lent: each module implements the generated `Host` traits of
//! one WIT interface (`bindings`) on `HostState` (`state`), and does little more than translate
//! between WIT types and the host's own modules, which do the work.
//!
//! Why here, apart from the work: the resources the guest holds (an export stream, a repository,
//! a layer upload...) are mapped into `bindings` with `with:`, so the generated code names their
//! types. If the modules defining them also implemented the traits, they would import
//! `bindings` while `bindings` imports them: a circle. So, as in wasmtime's WASI crates
//! (`p2/host/*.rs`), the types and their work live in their own modules, which know nothing of
//! WIT, and the trait impls live here. Typed errors become the guest's one-line
//! `error-message` only here (`HostError::message`).

pub mod archive;
pub mod cache;
pub mod clock;
pub mod credentials;
pub mod daemon;
pub mod layout;
pub mod progress;
pub mod registry;
mod shared;
pub mod signer;
mod types;
