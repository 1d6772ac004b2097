//! Unit tests of the cost model, the ledger and the account.

use super::*;

/// A request as respite forwards it for a publisher of `shared:*`: its keys behind the
/// prefix but the shared ones.
struct Forward {
    args: Vec<Bytes>,
    prefixed: Marks,
}

fn forward(line: &str) -> (Command, KeyMap, Forward) {
    let args: Vec<Bytes> = line
        .split(' ')
        .map(|a| Bytes::from(a.to_string()))
        .collect();
    let cmd = crate::command::lookup(&args).unwrap();
    let keys = KeyMap::find(&cmd, &args).unwrap();
    let mut prefixed = Marks::default();
    for (i, _) in keys.iter() {
        if !args[i].starts_with(b"shared:") {
            prefixed.set(i);
        }
    }
    (cmd, keys, Forward { args, prefixed })
}

/// Tenant `a`'s ledger, with a quota and a lease of `granted` bytes.
fn leased(granted: u64) -> Ledger {
    let limits = QuotaLimits {
        quota: 1 << 30,
        overage: 0,
    };
    let l = Ledger::new("a", Some(limits));
    l.local.lock().unwrap().granted = granted;
    l
}

fn set_cmd() -> Command {
    crate::command::lookup(&[Bytes::from("SET")]).unwrap()
}

/// Redis' default `proto-max-bulk-len`.
const MAX_BULK: u64 = 512 * 1024 * 1024;

fn cost_of(line: &str) -> Option<WriteCost> {
    let (cmd, keys, fwd) = forward(line);
    cost(
        &cmd,
        &fwd.args,
        &keys,
        &fwd.prefixed,
        "tenant:a:".len(),
        MAX_BULK,
    )
}

fn bytes(line: &str) -> u64 {
    match cost_of(line).unwrap().growth {
        Growth::Bytes(b) => b,
        other => panic!("{line}: {other:?}"),
    }
}

#[test]
fn reads_cost_nothing_and_deletes_never_grow() {
    assert!(cost_of("GET k").is_none());
    assert!(cost_of("GEORADIUS g 0 0 1 km").is_none());
    assert!(cost_of("SORT k").is_none());
    let del = cost_of("DEL a b").unwrap();
    assert_eq!(del.growth, Growth::None);
    assert_eq!(
        del.keys,
        Keys::Many(vec![Bytes::from("a"), Bytes::from("b")])
    );
}

#[test]
fn the_lone_key_cost_agrees_with_the_general_one() {
    let lines = [
        "SET k v",
        "SET k v EX 10",
        "SET shared:k v",
        "HSET h f v g w",
        "LPUSH l x y z",
        "APPEND k tail",
        "SETRANGE k 100 x",
        "INCR n",
        "EXPIRE k 5",
        "LPOP l",
        "GET k",
        "XADD s * f v",
        "PFADD p a b",
    ];
    for line in lines {
        let (cmd, keys, fwd) = forward(line);
        assert!(matches!(keys, KeyMap::Lone(_)), "{line}");
        let listed = KeyMap::Many(keys.iter().collect());
        let prefix_len = "tenant:a:".len();
        assert_eq!(
            cost(&cmd, &fwd.args, &keys, &fwd.prefixed, prefix_len, MAX_BULK),
            keyed_cost(
                &cmd,
                &fwd.args,
                &listed,
                &fwd.prefixed,
                prefix_len as u64,
                false
            ),
            "{line}"
        );
    }
    assert!(
        cost_of("SET shared:k v").is_none(),
        "not the tenant's usage"
    );
}

#[test]
fn estimates_bound_what_redis_measures() {
    // MEMORY USAGE of "tenant:a:k" = "v" is 72; of a 100,000-byte value, 114,744.
    assert!(bytes("SET k v") >= 72);
    let big = format!("SET k {}", "x".repeat(100_000));
    assert!(bytes(&big) >= 114_744);
    assert!(bytes("SETRANGE k 1000000 x") > 1_000_000);
    assert!(bytes("SETBIT k 8000000 1") > 1_000_000);
    assert!(bytes("BITFIELD k SET u8 #1000000 1") > 1_000_000);
    assert!(bytes("BITFIELD k GET u8 0") < 1_000);
    assert!(bytes("XADD s * f v") >= 4_736);
}

#[test]
fn ttls_are_read_from_every_command_that_sets_one() {
    let ttl = |line: &str| cost_of(line).unwrap().expires_in;
    assert_eq!(ttl("SET k v EX 10"), Some(Duration::from_secs(10)));
    assert_eq!(ttl("SET k v NX PX 250"), Some(Duration::from_millis(250)));
    assert_eq!(ttl("SETEX k 3 v"), Some(Duration::from_secs(3)));
    assert_eq!(ttl("PEXPIRE k 40 NX"), Some(Duration::from_millis(40)));
    assert_eq!(ttl("EXPIREAT k 1"), Some(Duration::ZERO));
    assert_eq!(ttl("SET k v"), None);
    assert_eq!(ttl("HSET k ex 10"), None);
}

#[test]
fn allocation_classes_are_jemallocs() {
    let classes: Vec<u64> = [1, 9, 17, 33, 49, 65, 100, 129, 200, 257, 200_003]
        .into_iter()
        .map(alloc_class)
        .collect();
    assert_eq!(
        classes,
        [8, 16, 32, 48, 64, 80, 112, 160, 224, 320, 229_376]
    );
}

#[test]
fn copies_are_sized_by_their_sources() {
    let c = cost_of("SUNIONSTORE d a shared:b").unwrap();
    assert_eq!(c.keys, Keys::Arg(1));
    let source = |name: &'static str, mine| Source {
        name: Bytes::from(name),
        mine,
    };
    assert_eq!(
        c.growth,
        Growth::CopyOf(
            vec![source("a", true), source("shared:b", false)],
            stored("tenant:a:d".len() as u64)
        )
    );
    let s = cost_of("SORT src STORE dst").unwrap();
    assert_eq!(s.keys, Keys::Arg(3));
    assert!(matches!(s.growth, Growth::CopyOf(..)));
    // A move takes from one key what it adds to another.
    assert!(matches!(
        cost_of("LMOVE a b LEFT RIGHT").unwrap().growth,
        Growth::Bytes(_)
    ));
}

#[test]
fn the_lease_is_handed_back_on_flush() {
    let l = Ledger::new("a", None);
    l.local.lock().unwrap().granted = 1000;
    let recent = Duration::from_secs(1);
    assert!(matches!(l.try_charge(300, recent, None), Charge::Done));
    assert!(matches!(l.try_charge(300, recent, None), Charge::Done));
    assert!(matches!(
        l.try_charge(500, recent, None),
        Charge::Short(100)
    ));
    l.mark_full(500);
    assert!(matches!(l.try_charge(600, recent, None), Charge::Full));
    assert!(matches!(l.try_charge(450, recent, None), Charge::Short(50)));
    l.settle([Bytes::from("k")], 300);
    assert!(
        matches!(l.try_charge(600, recent, None), Charge::Short(_)),
        "a settle clears it"
    );
    let f = l.take_flush(false);
    // One write settled (300) and 400 unused go back; 300 stay for the write in flight.
    assert_eq!((f.release, f.keys.len()), (700, 1));
    let local = l.local.lock().unwrap();
    assert_eq!((local.granted, local.charged, local.settled), (300, 300, 0));
}

#[test]
fn a_busy_instance_keeps_its_last_grant_until_it_goes_idle() {
    let l = Ledger::new("a", None);
    {
        let mut local = l.local.lock().unwrap();
        (local.granted, local.last_grant) = (1000, 1000);
    }
    assert!(matches!(
        l.try_charge(300, Duration::ZERO, None),
        Charge::Done
    ));
    l.settle([Bytes::from("k")], 300);
    assert_eq!(l.take_flush(true).release, 300);
    assert_eq!(l.local.lock().unwrap().granted, 700);
    // Written lately: kept, and nothing to do until the grace or the renewal is due.
    assert!(
        !l.has_work(Duration::ZERO),
        "a lease of a tenant that wrote lately costs no flush"
    );
    assert_eq!(l.take_flush(true).release, 0);
    // No write for the grace: all of it goes back.
    let long_ago = std::time::Instant::now() - super::ledger::IDLE_GRACE;
    l.local.lock().unwrap().last_charge = Some(long_ago);
    assert!(l.has_work(Duration::ZERO));
    assert_eq!(l.take_flush(true).release, 700, "idle: all of it goes back");
    assert_eq!(l.local.lock().unwrap().granted, 0);
    assert!(!l.has_work(Duration::ZERO));
}

#[test]
fn a_kept_lease_is_renewed_before_redis_lets_it_expire() {
    let l = Ledger::new("a", None);
    {
        let mut local = l.local.lock().unwrap();
        (local.granted, local.last_grant) = (1000, 1000);
        local.last_charge = Some(std::time::Instant::now());
        local.renewed = Some(std::time::Instant::now());
    }
    assert!(!l.has_work(Duration::ZERO));
    let long_ago = std::time::Instant::now() - super::ledger::RENEW_AFTER;
    l.local.lock().unwrap().renewed = Some(long_ago);
    assert!(l.has_work(Duration::ZERO), "a flush renews the lease");
    assert_eq!(l.take_flush(true).release, 0, "still writing: kept");
    assert!(!l.has_work(Duration::ZERO));
}

#[test]
fn a_sessions_allowance_comes_with_a_write_and_goes_back_with_the_batch() {
    let l = leased(100_000);
    let recent = Duration::from_secs(1);
    let mut account = Account::default();
    let (_, keys, set) = forward("SET k v");
    let cost = || {
        cost(
            &set_cmd(),
            &set.args,
            &keys,
            &set.prefixed,
            "tenant:a:".len(),
            MAX_BULK,
        )
        .unwrap()
    };
    let need = match cost().growth {
        Growth::Bytes(b) => b,
        other => panic!("{other:?}"),
    };
    // The first write takes a spare sixteenth of what is left, at most SESSION_SPARE;
    // the next ones take no lock.
    let first = account.admit_now(&l, cost(), recent).unwrap();
    let spare = SESSION_SPARE.min((100_000 - need) / 16);
    assert!(spare > need);
    assert_eq!(account.allowance, spare);
    assert_eq!(l.local.lock().unwrap().charged, need + spare);
    let second = account.admit_now(&l, cost(), recent).unwrap();
    assert_eq!(account.allowance, spare - need);
    assert_eq!(l.local.lock().unwrap().charged, need + spare);
    // Answered: both settle, and what is left of the allowance goes back.
    let (mut first, mut second) = (first, second);
    first.keys.take_from(&mut set.args.clone());
    second.keys.clone_from(&set.args);
    account.add(first);
    account.add(second);
    account.finish(Some(&l));
    let local = l.local.lock().unwrap();
    assert_eq!((local.charged, local.settled), (2 * need, 2 * need));
    assert_eq!(account.allowance, 0);
    assert_eq!(local.dirty.len(), 1, "one key, listed once");
    assert!(local.dirty.contains(&b"tenant:a:k"[..]));
}

#[test]
fn a_write_the_allowance_does_not_cover_hands_it_back_before_asking_redis() {
    // A small lease: the spare is a sixteenth of it, under SESSION_SPARE.
    let l = leased(1_000);
    let mut account = Account::default();
    let (_, keys, small) = forward("SET k v");
    let cmd = set_cmd();
    let recent = Duration::from_secs(1);
    let w = account
        .admit_now(
            &l,
            cost(&cmd, &small.args, &keys, &small.prefixed, 9, MAX_BULK).unwrap(),
            recent,
        )
        .unwrap();
    assert!(account.allowance > 0);
    let (_, keys, big) = forward(&format!("SET k {}", "x".repeat(2_000)));
    let big_cost = cost(&cmd, &big.args, &keys, &big.prefixed, 9, MAX_BULK).unwrap();
    let refused = account.admit_now(&l, big_cost, recent);
    assert!(refused.is_err(), "the lease is short: Redis is asked");
    assert_eq!(account.allowance, 0);
    assert_eq!(l.local.lock().unwrap().charged, w.charged);
    account.add(w);
    account.finish(Some(&l));
}

/// Tenant `a` with a lease of 10,000 bytes, 1,000 of them charged, whose quota then shrank
/// to 500 bytes (a reload).
fn shrunk() -> Ledger {
    let l = leased(10_000);
    assert!(matches!(
        l.try_charge(1_000, Duration::from_secs(1), None),
        Charge::Done
    ));
    l.set_limits(Some(QuotaLimits {
        quota: 500,
        overage: 0,
    }));
    l
}

#[test]
fn new_limits_give_up_the_lease_reserved_under_the_old() {
    let l = shrunk();
    // The write in flight keeps its charge; the rest of the lease goes back at the flush.
    assert!(matches!(
        l.try_charge(100, Duration::from_secs(1), None),
        Charge::Short(100)
    ));
    assert!(l.has_work(Duration::ZERO));
    let f = l.take_flush(true);
    assert_eq!(f.release, 9_000);
    assert_eq!(l.limits().map(|x| x.quota), Some(500));
    // The same limits again change nothing.
    l.set_limits(l.limits());
    assert_eq!(l.local.lock().unwrap().dropped, 0);
}

#[test]
fn a_ledger_wakes_once_and_sleeps_when_it_holds_nothing() {
    let ledgers = Ledgers::default();
    let l = Arc::new(Ledger::new("a", None));
    ledgers.insert(&l);
    assert!(l.quiet());
    l.settle([Bytes::from_static(b"tenant:a:k")], 0);
    l.settle([Bytes::from_static(b"tenant:a:j")], 0);
    assert_eq!(
        std::mem::take(&mut *ledgers.wakeups.lock().unwrap()),
        vec![Bytes::from_static(b"tenant:a:")],
        "woken once, however many writes"
    );
    assert!(!l.quiet());
    let f = l.take_flush(true);
    assert_eq!(f.keys.len(), 2);
    assert!(l.quiet());
}

#[test]
fn written_keys_wait_the_measure_delay_unless_there_are_many() {
    let l = Ledger::new("a", None);
    let delay = Duration::from_secs(2);
    l.settle([Bytes::from("k")], 0);
    assert!(!l.has_work(delay), "one key waits");
    assert!(l.has_work(Duration::ZERO));
    l.local.lock().unwrap().dirty_since = Some(std::time::Instant::now() - delay);
    assert!(l.has_work(delay), "its delay is over");
    l.take_flush(true);
    assert!(!l.has_work(delay));
    l.settle(
        (0..super::ledger::MEASURE_SOON).map(|i| Bytes::from(format!("k{i}"))),
        0,
    );
    assert!(l.has_work(delay), "many keys are measured at once");
}

/// A flush that fails (Redis busy, pool timeout) right after a reload lowered the quota
/// must not put the lease given up under the old limits back where writes spend it.
#[test]
fn a_failed_flush_keeps_the_old_lease_given_up() {
    let l = shrunk();
    let f = l.take_flush(true);
    l.undo_flush(f);
    assert!(
        !matches!(
            l.try_charge(5_000, Duration::from_secs(1), None),
            Charge::Done
        ),
        "a 5,000-byte write admitted from the old lease under a 500-byte quota"
    );
    assert_eq!(l.local.lock().unwrap().dropped, 9_000, "still to hand back");
}

#[test]
fn offsets_redis_refuses_cost_nothing() {
    for line in [
        "SETRANGE k 536870912 A",
        "SETRANGE k -1 A",
        "SETRANGE k 01 A",
        "SETBIT k 4294967296 1",
        "SETBIT k x 1",
        "BITFIELD k SET u8 #536870912 1",
        "BITFIELD k GET u8 -1 SET u8 0 1",
        "BITFIELD k SET u8 0 1 FOO",
    ] {
        assert_eq!(cost_of(line), None, "{line}");
    }
    for line in [
        "SETRANGE k 536870911 A",
        "SETRANGE k 536870912 ",
        "SETBIT k 4294967295 1",
        "BITFIELD k SET u8 #536870911 1 OVERFLOW SAT GET i4 0",
    ] {
        assert!(cost_of(line).is_some(), "{line}");
    }
}

#[test]
fn a_transactions_writes_in_two_databases_settle_by_their_names_in_redis() {
    let base = Bytes::from_static(b"tenant:t:");
    let write = |key: &'static [u8], ttl: Option<u64>, db: Option<&'static [u8]>| {
        Written::uncharged(WriteCost {
            keys: Keys::One(Bytes::from_static(key)),
            growth: Growth::None,
            expires_in: ttl.map(Duration::from_secs),
            db: db.map(Bytes::from_static),
        })
    };
    let mut tx = write(b"a", Some(5), None);
    tx.absorb(&mut write(b"b", None, None), &base);
    tx.absorb(&mut write(b"c", Some(7), Some(b"tenant:t@1:")), &base);
    tx.absorb(&mut write(b"d", Some(9), None), &base);
    let mut account = Account::default();
    account.add(tx);
    let names = |keys: &[&str]| -> Vec<Bytes> {
        keys.iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect()
    };
    let all = names(&["tenant:t:a", "tenant:t:b", "tenant:t@1:c", "tenant:t:d"]);
    assert_eq!(account.named, all);
    assert_eq!(
        account.expiring_named,
        [
            (Duration::from_secs(5), all.clone()),
            (Duration::from_secs(7), names(&["tenant:t@1:c"])),
            (Duration::from_secs(9), names(&["tenant:t:d"])),
        ]
    );
    assert!(account.keys.is_empty() && account.expiring.is_empty());
    // One database: the keys stay as the ledger knows them, each TTL with its own.
    let mut tx = write(b"a", None, None);
    tx.absorb(&mut write(b"b", Some(3), None), &base);
    let mut account = Account::default();
    account.add(tx);
    assert_eq!(account.keys, names(&["a", "b"]));
    assert_eq!(account.expiring, [(Duration::from_secs(3), names(&["b"]))]);
    assert!(account.named.is_empty());
}
