//! The code generated from `wit/ocipush.wit`, and only that, as wasmtime's own WASI crates keep
//! theirs: the `pusher` world's types and the `Host` traits the capabilities implement.
//!
//! Resources are mapped (`with:`) to the host types that stand behind their handles. Every
//! `error-message` is `HostError`: a capability fails with a typed error, which becomes one line
//! for the guest in `types::Host::convert_error_message`, or with a trap that ends the guest.
//! A layer upload's `upload-error` is `UploadFailure`, converted in
//! `registry::Host::convert_upload_error` the same way.

wasmtime::component::bindgen!({
    world: "pusher",
    path: "../wit",
    imports: { default: trappable },
    trappable_error_type: {
        "ocipush:core/types.error-message" => crate::state::HostError,
        "ocipush:core/registry.upload-error" => crate::state::UploadFailure,
    },
    with: {
        "ocipush:core/docker.export-stream": crate::daemon::export::ExportStream,
        "ocipush:core/docker.build-job": crate::daemon::build::BuildJob,
        "ocipush:core/archive.tarball": crate::archive::Tarball,
        "ocipush:core/credentials.credential": crate::credentials::Configured,
        "ocipush:core/registry.repository": crate::registry::Repository,
        "ocipush:core/registry.layer-upload": crate::registry::LayerUpload,
        "ocipush:core/layout.directory": crate::layout::Directory,
        "ocipush:core/layout.layer-file": crate::layout::LayerFile,
        "ocipush:core/layout.reader": crate::layout::Reader,
        "ocipush:core/signer.signing-key": crate::capabilities::signer::Handle,
    },
});
