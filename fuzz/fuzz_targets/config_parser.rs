//! The config parser on any text (the property of `tests/suite/properties.rs`, run for as
//! long as one likes): a config or the errors, never a panic; parsing is a function of the
//! text (a second parse agrees). A config that parses has passed `validate`, so what startup
//! reads from it on that promise (addresses, every tenant built from its entry) must not
//! panic either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use respite::config::Config;
use respite::tenant::Tenant;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::parse(text);
    let second = Config::parse(text);
    let config = match (first, second) {
        (Ok(config), Ok(_)) => config,
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            return;
        }
        (a, b) => panic!("two parses disagree: {:?} then {:?}", a.is_ok(), b.is_ok()),
    };
    // What `respite::context` reads on the promise of `validate`.
    let _ = config.listen_addr();
    let _ = config.upstream_addr();
    if config.cluster() {
        let _ = config.seed_addrs();
    }
    let shared = config.shared_prefixes();
    let quotas = config.quotas_enabled();
    for t in &config.tenants {
        let tenant = Tenant::from_config(&config, t, &shared, quotas, None);
        let _ = tenant.db_prefix(tenant.databases - 1);
    }
});
