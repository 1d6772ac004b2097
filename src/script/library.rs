//! FUNCTION libraries per tenant. Library and function names are global in Redis, so a
//! tenant's are stored under its own names ([`library_names`]: `acme` → `acme_2mylib`) and
//! shown back without them; the library's code runs behind the library prelude. LIST and
//! FLUSH see only the tenant's libraries. These run over respite's own connection (after
//! the session's earlier requests are answered, so they keep their order).

use bytes::{BufMut, Bytes, BytesMut};
use deadpool_redis::redis::{self, Value};

use super::prelude::library_names;
use super::Prelude;
use crate::error::{Error, UpstreamError};
use crate::tenant::Tenant;
use crate::upstream::OwnPool;
use crate::wire::Resp;

/// One library as FUNCTION LIST shows it.
#[derive(Debug, Default, PartialEq)]
pub struct Library {
    pub name: Vec<u8>,
    pub engine: Vec<u8>,
    pub functions: Vec<Function>,
    pub code: Option<Vec<u8>>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Function {
    pub name: Vec<u8>,
    pub description: Option<Vec<u8>>,
    pub flags: Vec<Vec<u8>>,
}

fn upstream(e: crate::upstream::PoolError) -> Error {
    e.for_client(UpstreamError::Bookkeeping)
}

/// Redis' error, with the tenant's names as the tenant knows them.
fn redis_error(e: &redis::RedisError, names: &str) -> Error {
    let text = format!("{} {}", e.code().unwrap_or("ERR"), e.detail().unwrap_or(""));
    Error::Redis(text.replace(names, ""))
}

/// FUNCTION LOAD \[REPLACE\]: the library under the tenant's names; the reply is its name as
/// the tenant gave it.
pub async fn load(
    own: &OwnPool,
    prelude: &Prelude,
    tenant: &Tenant,
    confined: bool,
    replace: bool,
    code: &[u8],
) -> Result<Bytes, Error> {
    let names = library_names(&tenant.id);
    let Some(wrapped) = prelude.wrap_library(code, &tenant.prefix, &names, confined) else {
        return Err(Error::Unsupported(
            "respite reads a library's first line only as `#!lua name=<name>`, without \
             quotes or escapes"
                .into(),
        ));
    };
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD");
    if replace {
        cmd.arg("REPLACE");
    }
    cmd.arg(&wrapped[..]);
    match own.run(async |c| cmd.query_async::<Vec<u8>>(c).await).await {
        Ok(name) => Ok(Resp::bulk(
            name.strip_prefix(names.as_bytes()).unwrap_or(&name),
        )),
        Err(crate::upstream::PoolError::Redis(e)) if e.code().is_some() => {
            Err(redis_error(&e, &names))
        }
        Err(e) => Err(upstream(e)),
    }
}

/// FUNCTION DELETE of one of the tenant's libraries.
pub async fn delete(own: &OwnPool, tenant: &Tenant, name: &[u8]) -> Result<Bytes, Error> {
    let names = library_names(&tenant.id);
    let full = [names.as_bytes(), name].concat();
    match own
        .run(async |c| {
            redis::cmd("FUNCTION")
                .arg("DELETE")
                .arg(&full)
                .query_async::<()>(c)
                .await
        })
        .await
    {
        Ok(()) => Ok(Resp::ok()),
        Err(crate::upstream::PoolError::Redis(e)) if e.code().is_some() => {
            Err(redis_error(&e, &names))
        }
        Err(e) => Err(upstream(e)),
    }
}

/// The tenant's libraries whose name (as the tenant knows it) matches the glob `pattern`.
pub async fn list(
    own: &OwnPool,
    prelude: &Prelude,
    tenant: &Tenant,
    pattern: &[u8],
    with_code: bool,
) -> Result<Vec<Library>, Error> {
    let names = library_names(&tenant.id);
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LIST")
        .arg("LIBRARYNAME")
        .arg([names.as_bytes(), pattern].concat());
    if with_code {
        cmd.arg("WITHCODE");
    }
    let value: Value = own
        .run(async |c| cmd.query_async(c).await)
        .await
        .map_err(upstream)?;
    let mut libraries = parse_list(&value);
    // `acme_2*` matches only acme's: no other tenant's names begin with `acme_2`.
    for lib in &mut libraries {
        if let Some(n) = lib.name.strip_prefix(names.as_bytes()) {
            lib.name = n.to_vec();
        }
        for f in &mut lib.functions {
            if let Some(n) = f.name.strip_prefix(names.as_bytes()) {
                f.name = n.to_vec();
            }
        }
        if let Some(code) = &lib.code {
            lib.code = Some(prelude.unwrap_library(code, &names).to_vec());
        }
    }
    Ok(libraries)
}

/// FUNCTION FLUSH for one tenant: each of its libraries deleted.
pub async fn flush(own: &OwnPool, prelude: &Prelude, tenant: &Tenant) -> Result<Bytes, Error> {
    for lib in list(own, prelude, tenant, b"*", false).await? {
        delete(own, tenant, &lib.name).await?;
    }
    Ok(Resp::ok())
}

/// FUNCTION LIST's reply (RESP2 from respite's own connection: flat field/value arrays).
fn parse_list(value: &Value) -> Vec<Library> {
    let Value::Array(libs) = value else {
        return Vec::new();
    };
    libs.iter()
        .map(|lib| {
            let mut out = Library::default();
            for (k, v) in fields(lib) {
                match k.as_slice() {
                    b"library_name" => out.name = bytes(v),
                    b"engine" => out.engine = bytes(v),
                    b"library_code" => out.code = Some(bytes(v)),
                    b"functions" => {
                        if let Value::Array(fs) = v {
                            out.functions = fs.iter().map(parse_function).collect();
                        }
                    }
                    _ => {}
                }
            }
            out
        })
        .collect()
}

fn parse_function(f: &Value) -> Function {
    let mut out = Function::default();
    for (k, v) in fields(f) {
        match k.as_slice() {
            b"name" => out.name = bytes(v),
            b"description" => out.description = (*v != Value::Nil).then(|| bytes(v)),
            b"flags" => {
                if let Value::Array(flags) | Value::Set(flags) = v {
                    out.flags = flags.iter().map(bytes).collect();
                }
            }
            _ => {}
        }
    }
    out
}

fn fields(v: &Value) -> Vec<(Vec<u8>, &Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((bytes(k), v)),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (bytes(k), v)).collect(),
        _ => Vec::new(),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// FUNCTION LIST's reply in the client's protocol, as Redis writes it: per library a map
/// (RESP3) or a flat array (RESP2) of library_name, engine, functions (each with name,
/// description and a set of flags) and, WITHCODE, library_code.
pub fn encode_list(libraries: &[Library], protocol: u8) -> Bytes {
    let resp = Resp(protocol);
    let mut out = BytesMut::new();
    let map = |out: &mut BytesMut, n: usize| resp.put_map_len(out, n);
    Resp::put_array_len(&mut out, libraries.len());
    for lib in libraries {
        map(&mut out, 3 + usize::from(lib.code.is_some()));
        Resp::put_bulk(&mut out, b"library_name");
        Resp::put_bulk(&mut out, &lib.name);
        Resp::put_bulk(&mut out, b"engine");
        Resp::put_bulk(&mut out, &lib.engine);
        Resp::put_bulk(&mut out, b"functions");
        Resp::put_array_len(&mut out, lib.functions.len());
        for f in &lib.functions {
            map(&mut out, 3);
            Resp::put_bulk(&mut out, b"name");
            Resp::put_bulk(&mut out, &f.name);
            Resp::put_bulk(&mut out, b"description");
            match &f.description {
                Some(d) => Resp::put_bulk(&mut out, d),
                None => out.extend_from_slice(&resp.null()),
            }
            Resp::put_bulk(&mut out, b"flags");
            match protocol {
                3 => {
                    out.put_u8(b'~');
                    out.extend_from_slice(f.flags.len().to_string().as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                _ => Resp::put_array_len(&mut out, f.flags.len()),
            }
            for flag in &f.flags {
                // Simple strings, as Redis writes them.
                out.put_u8(b'+');
                out.extend_from_slice(flag);
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Some(code) = &lib.code {
            Resp::put_bulk(&mut out, b"library_code");
            Resp::put_bulk(&mut out, code);
        }
    }
    out.freeze()
}
