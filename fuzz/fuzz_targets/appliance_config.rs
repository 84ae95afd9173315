//! The appliance's configuration file (`appliance::config`): TOML text parsed into
//! `Config`, with the errors that name the key and the line.
//!
//! Input: the file's bytes (`Config::load` reads it with `read_to_string`, so text that
//! is not UTF-8 never reaches the parser).
//!
//! Checks: no panic; a configuration that parses gives the directories derived from it.

#![no_main]

use appliance::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(config) => {
            let _ = config.node_dir();
            let _ = config.console_dir();
            assert!(config.session_idle_s >= 60);
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
