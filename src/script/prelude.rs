//! The Lua prelude every tenant script runs behind (`prelude.lua`), filled in from the
//! command table: which commands a script may call, where their keys are (Redis' key specs,
//! the same table the proxy uses), and which replies carry key names.
//!
//! A tenant's script is sent to Redis as `<shebang line>` + the prelude (one line) + the
//! script, so Redis' error messages keep the script's own line numbers. The prelude does
//! not depend on the tenant: the tenant's prefix comes as an argument, so one wrapped script
//! serves every tenant that loads the same body and Redis caches it once.

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use crate::command::{BeginSearch, Command, CommandSpec, FindKeys, KeySpec, COMMANDS, KS_NOT_KEY};
use crate::namespace::{reply_shape, Shape};
use crate::policy;

const EVAL: &str = include_str!("prelude.lua");
const FUNCTION: &str = include_str!("function.lua");
const CORE: &str = include_str!("core.lua");

/// The prelude, built once from the table and the shared prefixes.
#[derive(Debug)]
pub struct Prelude {
    /// The EVAL prelude's line up to and after the per-script part (`@FAST@`).
    head: Bytes,
    tail: Bytes,
    /// The FUNCTION library prelude's line, with its per-tenant and per-library parts.
    library: String,
    /// `core.lua` filled in: a Lua function of (prefix, redis, FAST, state).
    core: String,
    /// Commands (lowercase) whose only key is their first argument and whose reply carries
    /// no key name: a script that spells one out calls it through the prelude's fast path.
    fast: HashSet<Vec<u8>>,
    /// A short digest of the prelude: wrapped scripts (and respite's record of them in
    /// Redis) differ between preludes, so instances with different ones do not mix them.
    pub id: String,
}

impl Prelude {
    pub fn new(shared: &[Bytes]) -> Prelude {
        let mut specs = String::from("|");
        let mut fast = HashSet::new();
        for spec in COMMANDS {
            if spec.subcommands.is_empty() && push_entry(&mut specs, None, spec) {
                fast.insert(spec.name.to_vec());
            }
            for sub in spec.subcommands {
                push_entry(&mut specs, Some(spec), sub);
            }
        }
        let shared = shared
            .iter()
            .map(|p| lua_string(p))
            .collect::<Vec<_>>()
            .join(", ");
        let core = one_line(CORE)
            .replace("@SPECS@", &lua_string(specs.as_bytes()))
            .replace("@SHARED@", &format!("{{{shared}}}"));
        let line = one_line(EVAL).replace("@CORE@", &core);
        let (head, tail) = line.split_once("@FAST@").expect("the template has @FAST@");
        Prelude {
            id: hex::encode(&Sha1::digest(line.as_bytes())[..4]),
            head: Bytes::copy_from_slice(head.as_bytes()),
            tail: Bytes::from(format!("{tail} ")),
            library: one_line(FUNCTION).replace("@CORE@", &core) + " ",
            core,
            fast,
        }
    }

    /// The prelude's core, as a Lua function expression of (prefix, redis, FAST, state)
    /// returning the shadowed `redis` table: the tests run it with a `redis` whose `call`
    /// hands back the arguments it was given, to see which ones it put in the namespace.
    pub fn core(&self) -> &str {
        &self.core
    }

    /// A tenant's FUNCTION library as Redis loads it: the library and its functions renamed
    /// into the tenant's names (`names`, see [`library_names`]), the library prelude after
    /// the `#!lua name=...` line. `None` when the first line is not one respite can read
    /// exactly as Redis does (quotes, escapes): Redis would read a name respite did not
    /// rename. A library Redis will refuse anyway (no first line, no name) is left alone.
    pub fn wrap_library(
        &self,
        code: &[u8],
        prefix: &[u8],
        names: &str,
        confined: bool,
    ) -> Option<Bytes> {
        let Some(end) = code.iter().position(|&b| b == b'\n') else {
            return Some(Bytes::copy_from_slice(code));
        };
        let (first, rest) = (&code[..end], &code[end + 1..]);
        if !first.starts_with(b"#!") {
            return Some(Bytes::copy_from_slice(code));
        }
        if first
            .iter()
            .any(|&b| matches!(b, b'"' | b'\'' | b'\\') || b == 0)
        {
            return None;
        }
        let mut found = false;
        let mut shebang = Vec::with_capacity(first.len() + names.len());
        for (i, part) in first
            .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            if i > 0 {
                shebang.push(b' ');
            }
            match part.get(..5) {
                // An empty name goes to Redis as it is, which refuses it.
                Some(n) if i > 0 && n.eq_ignore_ascii_case(b"name=") && part.len() > 5 => {
                    found = true;
                    shebang.extend_from_slice(b"name=");
                    shebang.extend_from_slice(names.as_bytes());
                    shebang.extend_from_slice(&part[5..]);
                }
                _ => shebang.extend_from_slice(part),
            }
        }
        if !found {
            return Some(Bytes::copy_from_slice(code));
        }
        let prelude = self
            .library
            .replace("@PREFIX@", &lua_string(prefix))
            .replace("@MODE@", if confined { "'c'" } else { "'u'" })
            .replace("@NAMES@", &lua_string(names.as_bytes()))
            .replace("@FAST@", &self.fast_table(rest));
        let mut out = BytesMut::with_capacity(code.len() + prelude.len() + names.len() + 1);
        out.put_slice(&shebang);
        out.put_u8(b'\n');
        out.put_slice(prelude.as_bytes());
        out.put_slice(rest);
        Some(out.freeze())
    }

    /// The library as the tenant wrote it, from the code Redis holds (FUNCTION LIST
    /// WITHCODE): its own name back in the first line, the prelude line gone.
    pub fn unwrap_library(&self, code: &[u8], names: &str) -> Bytes {
        let Some(end) = code.iter().position(|&b| b == b'\n') else {
            return Bytes::copy_from_slice(code);
        };
        let first =
            String::from_utf8_lossy(&code[..end]).replacen(&format!("name={names}"), "name=", 1);
        let mut rest = &code[end + 1..];
        let marker = b"end)(__respite_global_redis(), __respite_global_redis); ";
        if let Some(at) = rest.windows(marker.len()).position(|w| w == marker) {
            if rest.starts_with(b"local __respite_global_redis") {
                rest = &rest[at + marker.len()..];
            }
        }
        let mut out = BytesMut::with_capacity(code.len());
        out.put_slice(first.as_bytes());
        out.put_u8(b'\n');
        out.put_slice(rest);
        out.freeze()
    }

    /// `{["INCR"]=1, ...}`: the fast-path commands `body` names in string literals, spelled
    /// as it spells them (so the prelude need not lowercase the name on each call).
    fn fast_table(&self, body: &[u8]) -> String {
        let mut names: Vec<&[u8]> = literals(body)
            .filter(|l| self.fast.contains(&l.to_ascii_lowercase()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let entries: Vec<String> = names
            .into_iter()
            .map(|n| format!("[{}]=1", lua_string(n)))
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    /// The script Redis runs for a tenant's `body`: the body's shebang line (`#!lua
    /// flags=...`, which Redis reads from the first line) stays first.
    pub fn wrap(&self, body: &[u8]) -> Bytes {
        let split = match body.starts_with(b"#!") {
            true => body
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |i| i + 1),
            false => 0,
        };
        let (shebang, rest) = body.split_at(split);
        let fast = self.fast_table(rest);
        let mut out = BytesMut::with_capacity(
            body.len() + self.head.len() + fast.len() + self.tail.len() + 1,
        );
        out.put_slice(shebang);
        if !shebang.is_empty() && !shebang.ends_with(b"\n") {
            out.put_u8(b'\n');
        }
        out.put_slice(&self.head);
        out.put_slice(fast.as_bytes());
        out.put_slice(&self.tail);
        out.put_slice(rest);
        out.freeze()
    }
}

/// The prefix of a tenant's FUNCTION library and function names: Redis allows only
/// `[A-Za-z0-9_]` in them, so the id's `_` and `-` are written `_0` and `_1` and the prefix
/// ends in `_2`, which no encoded id contains (no tenant's names begin with another's).
pub fn library_names(tenant_id: &str) -> String {
    let mut out = String::with_capacity(tenant_id.len() + 4);
    for c in tenant_id.chars() {
        match c {
            '_' => out.push_str("_0"),
            '-' => out.push_str("_1"),
            c => out.push(c),
        }
    }
    out.push_str("_2");
    out
}

/// A template as one line: whole-line comments go, the rest is joined (Lua does not care).
fn one_line(template: &str) -> String {
    template
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Redis' name for a script: the lowercase hex SHA1 of its body.
pub fn sha1_hex(body: &[u8]) -> [u8; 40] {
    let mut out = [0u8; 40];
    hex::encode_to_slice(Sha1::digest(body), &mut out).expect("40 hex digits");
    out
}

/// The short strings between quotes in a script: the names of the commands it calls (and
/// other words; only the names matter).
fn literals(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < body.len() {
            let q = body[i];
            i += 1;
            if q != b'\'' && q != b'"' {
                continue;
            }
            let start = i;
            while i < body.len() && body[i] != q && body[i] != b'\\' && body[i] != b'\n' {
                i += 1;
            }
            let word = &body[start..i.min(body.len())];
            if i < body.len() && body[i] == q {
                i += 1;
                if (1..=32).contains(&word.len()) {
                    return Some(word);
                }
            }
        }
        None
    })
}

/// `|name=flags/spec;spec|` for a command a script may call (subcommands as `container sub`).
/// Flags: `f` the reply's first element is a key, `x` XREAD's reply, `c` the keys are
/// channels (never shared), `s` SORT (its STORE key is found by SORT's own grammar). `true`
/// when the command takes the fast path (one key, its first argument, and plain replies).
fn push_entry(
    out: &mut String,
    parent: Option<&'static CommandSpec>,
    spec: &'static CommandSpec,
) -> bool {
    let cmd = Command { spec, parent };
    if !policy::allowed_in_scripts(&cmd) {
        return false;
    }
    let start = out.len();
    let name = String::from_utf8_lossy(spec.name);
    match parent {
        Some(p) => out.push_str(&format!("{} {name}=", String::from_utf8_lossy(p.name))),
        None => out.push_str(&format!("{name}=")),
    }
    let top = parent.is_none();
    match reply_shape(spec.name) {
        Shape::FirstKey if top => out.push('f'),
        Shape::Streams if top => out.push('x'),
        _ => {}
    }
    let channel = spec.key_specs.iter().any(|k| k.flags & KS_NOT_KEY != 0);
    if channel || (top && spec.name == b"publish") {
        out.push('c');
    }
    if top && matches!(spec.name, b"sort" | b"sort_ro") {
        out.push('s');
    }
    out.push('/');
    let mut specs: Vec<String> = spec.key_specs.iter().filter_map(key_spec).collect();
    if top && spec.name == b"publish" {
        // PUBLISH's channel has no key spec in Redis 7.0.
        specs.push("i1:r0,1,0".into());
    }
    out.push_str(&specs.join(";"));
    out.push('|');
    let entry = &out[start..];
    top && entry.ends_with("=/i1:r0,1,0|")
}

/// One key spec as the prelude reads it; `None` for what Redis cannot follow either.
fn key_spec(k: &KeySpec) -> Option<String> {
    let begin = match k.begin {
        BeginSearch::Index(i) => format!("i{i}"),
        BeginSearch::Keyword {
            keyword,
            start_from,
        } => format!(
            "k{},{start_from}",
            String::from_utf8_lossy(keyword).to_lowercase()
        ),
        BeginSearch::Unknown => return None,
    };
    let find = match k.find {
        FindKeys::Range {
            last_key,
            key_step,
            limit,
        } => format!("r{last_key},{key_step},{limit}"),
        FindKeys::KeyNum {
            key_num_idx,
            first_key,
            key_step,
        } => format!("n{key_num_idx},{first_key},{key_step}"),
        FindKeys::Unknown => return None,
    };
    Some(format!("{begin}:{find}"))
}

/// A Lua string literal of any bytes: printable ASCII as is, the rest as `\ddd`.
fn lua_string(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() + 2);
    s.push('\'');
    for &c in b {
        match c {
            b'\'' | b'\\' => s.push_str(&format!("\\{c}")),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\{c:03}")),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prelude() -> Prelude {
        Prelude::new(&[Bytes::from_static(b"shared:market:")])
    }

    #[test]
    fn the_prelude_is_one_line_and_keeps_the_shebang_first() {
        let p = prelude();
        assert!(!p.head.contains(&b'\n') && !p.tail.contains(&b'\n'));
        let w = p.wrap(b"#!lua flags=no-writes\nreturn 1");
        assert!(w.starts_with(b"#!lua flags=no-writes\nlocal KEYS, ARGV, redis = "));
        assert!(w.ends_with(b"; return 1"));
        assert_eq!(w.iter().filter(|&&b| b == b'\n').count(), 1);
        let w = p.wrap(b"return 1\nreturn 2");
        assert!(w.starts_with(b"local KEYS"));
    }

    #[test]
    fn the_table_names_what_scripts_may_call() {
        let p = prelude();
        let text = String::from_utf8_lossy(&p.head);
        for entry in [
            "|get=/i1:r0,1,0|",
            "|publish=c/i1:r0,1,0|",
            "|lmpop=f/i1:n0,1,1|",
            "|xinfo stream=/i2:r0,1,0|",
        ] {
            assert!(text.contains(entry), "{entry}");
        }
        for absent in [
            "|keys=",
            "|scan=",
            "|flushall=",
            "|config get=",
            "|georadius=",
            "|eval=",
        ] {
            assert!(!text.contains(absent), "{absent}");
        }
    }

    #[test]
    fn sha1_is_redis_script_name() {
        assert_eq!(
            &sha1_hex(b"return 1"),
            b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    #[test]
    fn the_fast_path_takes_the_single_key_commands_a_script_spells_out() {
        let p = Prelude::new(&[]);
        let body = br#"local n = redis.call("INCR", KEYS[1]) redis.call('expire', KEYS[1], 60)
            redis.call('LMPOP', 1, 'l', 'LEFT') return redis.call("GET", 'x') -- 'keys'"#;
        assert_eq!(p.fast_table(body), r#"{['GET']=1,['INCR']=1,['expire']=1}"#);
        let w = p.wrap(body);
        assert!(w.windows(10).any(|x| x == b"['INCR']=1"));
    }
}

#[cfg(test)]
mod library_tests {
    use super::*;

    #[test]
    fn tenant_names_never_begin_with_another_tenants() {
        assert_eq!(library_names("acme"), "acme_2");
        assert_eq!(library_names("a_b-c"), "a_0b_1c_2");
        let ids = ["a", "a_", "a_2", "a-", "a_0", "ab", "a2"];
        for x in ids {
            for y in ids {
                let (nx, ny) = (library_names(x), library_names(y));
                assert!(x == y || !nx.starts_with(&ny), "{x} {y}");
            }
        }
    }

    #[test]
    fn a_library_is_renamed_and_given_back_as_written() {
        let p = Prelude::new(&[]);
        let code = b"#!lua name=mylib\nredis.register_function('f', function() return 1 end)";
        let wrapped = p.wrap_library(code, b"tenant:a:", "a_2", true).unwrap();
        assert!(wrapped.starts_with(b"#!lua name=a_2mylib\nlocal __respite_global_redis"));
        assert_eq!(wrapped.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(&p.unwrap_library(&wrapped, "a_2")[..], &code[..]);
        // Spaces and case as Redis' own reading allows.
        let loose = b"#!lua \t NAME=x  \nreturn";
        let w = p.wrap_library(loose, b"tenant:a:", "a_2", true).unwrap();
        assert!(w.starts_with(b"#!lua name=a_2x\n"));
        // Quotes: Redis would read `name=g`, unrenamed; refused.
        assert!(p
            .wrap_library(b"#!lua \"name=g\"\nreturn", b"tenant:a:", "a_2", true)
            .is_none());
        // What Redis refuses anyway goes to Redis unchanged.
        for bad in [
            &b"return 1"[..],
            b"#!lua\nreturn",
            b"#!lua name=x",
            b"#!lua name=\nr",
        ] {
            assert_eq!(
                &p.wrap_library(bad, b"tenant:a:", "a_2", true).unwrap()[..],
                bad
            );
        }
    }
}
