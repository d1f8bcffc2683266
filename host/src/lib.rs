//! The `ocipush` host as a library: the runner that sandboxes the guest, the capabilities it is
//! lent (`wit/ocipush.wit`), and the modules that do their work. The binary (`main.rs`) is only
//! the command line; fuzz targets and tests reach the parsers here.
//!
//! Imports point one way: `runner` uses `state` and `bindings`; `capabilities` implement the
//! generated traits using `bindings`, `state` and the work modules; the work modules (`archive`,
//! `cache`, `credentials`, `daemon`, `layout`, `registry`, `encode`...) import neither
//! `bindings`, `state`, `capabilities` nor `runner`.

pub mod archive;
pub mod bindings;
pub mod cache;
pub mod capabilities;
pub mod confirmed;
pub mod credentials;
pub mod daemon;
pub mod encode;
pub mod files;
pub mod interrupt;
pub mod layout;
pub mod limits;
pub mod memory;
pub mod progress;
pub mod registries_conf;
pub mod registry;
pub mod runner;
pub mod signing;
pub mod state;
pub mod tls;
pub mod verify;
