//! The plugin configuration: any bytes are a configuration or an error naming the field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((config, profile)) = epp::config::Config::parse_with_profile(data) {
        // A configuration that parses runs a router.
        let _ = epp::route::Router::new(config, profile, 1);
    }
});
