//! The plugin configuration: any bytes are a configuration or an error naming the field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = epp::config::Config::parse(data) {
        // A configuration that parses builds its router.
        let _ = epp::route::Router::from_config(c, 1);
    }
});
