//! pk-update's integration tests: real bundles from random parts and a throwaway key,
//! installed into a real GPT disk image made with sfdisk, an ESP directory, a fake
//! command line and os-release (`common`); the reader (`bundle`), the installer
//! (`install`), the socket protocol with the real `pk-update serve` (`serve`), and the
//! two binaries (`tools`), and the systemd units (`units`).

mod bundle;
mod common;
mod install;
mod serve;
mod tools;
mod units;
