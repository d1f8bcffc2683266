//! ocipush's policy core. It reads a `docker save` stream, verifies every layer against the
//! image config, builds the manifest and decides the upload order; the host only lends it
//! capabilities (see `wit/ocipush.wit`). Everything but `component` is plain Rust, tested
//! natively against in-memory capabilities.
//!
//! Imports go one way. `model` (the image) and `ports` (the capabilities, as traits) are what
//! the rest speaks. The sources (`archive`, `layout`, and `save`, the export reader they and the
//! daemon's export go through) and the pipeline's stages (`push`) each depend on those, never
//! on each other; `component` ties them to the host.
//!
//! It is also a library for guests of one's own: a crate that implements [`policy::Policy`]
//! and invokes [`export_policy!`] builds (for `wasm32-wasip2`) into a component that runs the
//! standard pipeline under its own checks (`examples/policy`). The standard guest
//! (`guest/standard`) is this library under [`policy::AllowAll`].

pub mod archive;
pub mod build;
pub mod cache;
pub mod config;
pub mod digest;
pub mod evidence;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod own;
pub mod platforms;
pub mod policy;
pub mod ports;
pub mod progress;
pub mod push;
pub mod reference;
pub mod save;
pub mod savefile;

#[cfg(target_arch = "wasm32")]
pub mod component;

/// Exports the `pusher` world (`wit/ocipush.wit`) from the crate that invokes it, running the
/// standard pipeline under `$policy`, a type that implements [`policy::Policy`] and `Default`:
///
/// ```ignore
/// #[derive(Default)]
/// struct MyPolicy;
/// impl ocipush_guest::policy::Policy for MyPolicy { /* … */ }
/// ocipush_guest::export_policy!(MyPolicy);
/// ```
///
/// Invoke it once, in a `cdylib` crate built for `wasm32-wasip2`; elsewhere it expands to
/// nothing, so the same crate builds and unit-tests natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            // wit-bindgen's export macro takes a type's name, not a path or generics.
            type OcipushGuest = $crate::component::Component<$policy>;
    $crate::component::export!(OcipushGuest with_types_in $crate::component);
        };
    };
}

#[cfg(test)]
mod testing;
