//! INFO scoped to the tenant: its own clients and memory, never the whole server's.

use super::Sides;

/// `# Clients` counts the tenant's connections and its limit; `# Memory` keeps Redis'
/// settings and adds what the tenant's keys take, named as the tenant's.
#[tokio::test]
async fn clients_and_memory_are_the_tenant_own() {
    // Measured at once, not within the default 2 s.
    let sides = Sides::start_with(&[], "[quota]\nmeasure_delay_ms = 0\n").await;
    let mut p = sides.pair().await;
    let _second = sides.proxy.raw().await;
    assert_eq!(
        p.respite.cmd(&["SET", "k", &"v".repeat(5000)]).await,
        "+OK\r\n"
    );
    let clients = p.respite.cmd(&["INFO", "clients"]).await;
    assert!(
        clients.contains("\r\nconnected_clients:2\r\nmaxclients:10000\r\n"),
        "{clients}"
    );
    let (redis, _) = p.both(&["INFO", "memory"]).await;
    assert!(redis.contains("\r\nused_memory:"), "{redis}");
    let tenant_used = |memory: &str| -> u64 {
        memory
            .split("tenant_used_memory:")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{memory}"))
    };
    let mut memory = p.respite.cmd(&["INFO", "memory"]).await;
    for _ in 0..50 {
        if tenant_used(&memory) >= 5000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        memory = p.respite.cmd(&["INFO", "memory"]).await;
    }
    assert!(!memory.contains("\r\nused_memory:"), "{memory}");
    assert!(
        memory.contains("\r\nmaxmemory_policy:noeviction\r\n"),
        "{memory}"
    );
    let used = tenant_used(&memory);
    assert!(used >= 5000, "{memory}");
    assert!(
        memory.contains("\r\ntenant_maxmemory:10000000\r\n"),
        "{memory}"
    );
}
