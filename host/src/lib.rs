//! The `ocipush` host as a library: the capabilities the guest is lent (`wit/ocipush.wit`) and
//! the runner that sandboxes it. The binary (`main.rs`) is only the command line; fuzz targets
//! and tests reach the parsers here.

pub mod archive;
pub mod build;
pub mod cache;
pub mod context;
pub mod credentials;
pub mod daemon;
pub mod guest;
pub mod gzip;
pub mod interrupt;
pub mod layout;
pub mod limits;
pub mod progress;
pub mod registry;
pub mod retry;
pub mod tls;
pub mod upload;
