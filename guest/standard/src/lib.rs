//! The standard guest, the one `ocipush` embeds (host/build.rs builds it for wasm32-wasip2):
//! the `ocipush-guest` pipeline under a policy that allows every push the pipeline itself
//! accepts. A guest of one's own is a crate like this one with another policy
//! (`examples/policy`).

ocipush_guest::export_policy!(ocipush_guest::policy::AllowAll);
