//! A tenant's scripts (see `script`): EVAL and EVALSHA run wrapped in the prelude, as the
//! tenant's ACL user, under the tenant's timeout; SCRIPT LOAD, EXISTS, FLUSH and KILL answer
//! for the tenant's own scripts.

use std::time::Duration;

use super::*;
use crate::script::{library, sha1_hex, Confinement};

/// The scripting commands respite runs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptCmd {
    Eval,
    EvalSha,
    Load,
    Exists,
    Flush,
    Kill,
    Fcall,
    FunctionLoad,
    FunctionDelete,
    FunctionList,
    FunctionFlush,
    FunctionKill,
}

impl ScriptCmd {
    pub(super) fn of(cmd: &command::Command) -> Option<ScriptCmd> {
        Some(match cmd.names() {
            (b"eval" | b"eval_ro", None) => ScriptCmd::Eval,
            (b"evalsha" | b"evalsha_ro", None) => ScriptCmd::EvalSha,
            (b"fcall" | b"fcall_ro", None) => ScriptCmd::Fcall,
            (b"function", Some(b"load")) => ScriptCmd::FunctionLoad,
            (b"function", Some(b"delete")) => ScriptCmd::FunctionDelete,
            (b"function", Some(b"list")) => ScriptCmd::FunctionList,
            (b"function", Some(b"flush")) => ScriptCmd::FunctionFlush,
            (b"function", Some(b"kill")) => ScriptCmd::FunctionKill,
            (b"script", Some(b"load")) => ScriptCmd::Load,
            (b"script", Some(b"exists")) => ScriptCmd::Exists,
            (b"script", Some(b"flush")) => ScriptCmd::Flush,
            (b"script", Some(b"kill")) => ScriptCmd::Kill,
            _ => return None,
        })
    }
}

/// How a script goes out: the AUTH that confines it (none for a trusted tenant), and how
/// long it may run.
pub(crate) struct ScriptSend {
    pub(crate) auth: Option<[Bytes; 3]>,
    pub(crate) timeout: Duration,
}

const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

impl Session {
    pub(super) async fn script(
        &mut self,
        kind: ScriptCmd,
        fwd: Forward,
        cost: Option<WriteCost>,
    ) -> Result<(), End> {
        let Some(tenant) = self.tenant.clone() else {
            return Ok(());
        };
        let outcome = match kind {
            ScriptCmd::Eval | ScriptCmd::EvalSha | ScriptCmd::Fcall => {
                return self.run_script(kind, fwd, cost, tenant).await
            }
            // Redis would queue these; respite answers them for the tenant, now.
            _ if self.state.multi.is_some() => Err(Error::NotInMulti),
            ScriptCmd::Kill => Ok(self.ctx.scripts.kill_for(&tenant, b"SCRIPT").await),
            ScriptCmd::FunctionKill => Ok(self.ctx.scripts.kill_for(&tenant, b"FUNCTION").await),
            ScriptCmd::FunctionLoad
            | ScriptCmd::FunctionDelete
            | ScriptCmd::FunctionList
            | ScriptCmd::FunctionFlush => {
                self.drain().await?;
                self.library(kind, &fwd.args, &tenant).await
            }
            ScriptCmd::Flush => self
                .ctx
                .scripts
                .forget(&tenant)
                .await
                .map(|()| crate::wire::Resp::ok()),
            ScriptCmd::Load => self.load_script(&fwd.args[2], &tenant).await?,
            ScriptCmd::Exists => self.scripts_exist(&fwd.args[2..], &tenant).await?,
        };
        match outcome {
            Ok(reply) => {
                let failed = reply.first() == Some(&b'-');
                self.answer(reply);
                self.count(if failed { Outcome::Error } else { Outcome::Ok }, None);
            }
            Err(e) => {
                self.refuse(e);
                self.count(Outcome::Refused, None);
            }
        }
        Ok(())
    }

    /// EVAL / EVALSHA: the wrapped script, the tenant's header arguments after the keys,
    /// charged like a write, sent as the tenant's ACL user.
    async fn run_script(
        &mut self,
        kind: ScriptCmd,
        mut fwd: Forward,
        cost: Option<WriteCost>,
        tenant: Arc<Tenant>,
    ) -> Result<(), End> {
        if self.state.protocol == 2 && self.state.subs.any() {
            // Redis' own refusal, before respite changes the connection's login.
            let name = String::from_utf8_lossy(&fwd.args[0]).to_lowercase();
            return self.refuse_counted(Error::SubscribedOnly(name));
        }
        let scripts = &self.ctx.scripts;
        let confinement = match scripts.confinement(&tenant).await {
            Ok(c) => c,
            Err(e) => return self.refuse_counted(e),
        };
        if kind == ScriptCmd::Fcall && self.state.db != 0 {
            return self.refuse_counted(Error::Unsupported(
                "respite runs functions (FCALL) in database 0 only: a library is loaded once \
                 for all of a tenant's databases, with database 0's key prefix"
                    .into(),
            ));
        }
        if kind == ScriptCmd::Fcall {
            // The tenant's function, under its names; the library knows its prefix.
            let names = crate::script::library_names(&tenant.id);
            fwd.args[1] = Bytes::from([names.as_bytes(), &fwd.args[1]].concat());
            return self
                .send_script(fwd, cost, &tenant, confinement, b"fcall")
                .await;
        }
        if kind == ScriptCmd::Eval {
            let body = &fwd.args[1];
            let client = sha1_hex(body);
            let wrapped = scripts.prelude.wrap(body);
            let name = scripts
                .known(&tenant, &client)
                .unwrap_or_else(|| sha1_hex(&wrapped));
            scripts.remember(&tenant, client, name);
            fwd.args[1] = wrapped;
            fwd.expect = Expect::Reply(Shape::Script(script_names(&name, &client)));
        } else {
            let client = fwd.args[1].to_ascii_lowercase();
            let client = <[u8; 40]>::try_from(&client[..]).ok();
            let found = match &client {
                Some(client) => match scripts.lookup(&tenant, client).await {
                    Ok(found) => found,
                    Err(e) => return self.refuse_counted(e),
                },
                None => None,
            };
            let (Some(name), Some(client)) = (found, client) else {
                self.answer(crate::wire::Resp::error(NOSCRIPT));
                self.count(Outcome::Error, None);
                return Ok(());
            };
            fwd.args[1] = Bytes::copy_from_slice(&name);
            fwd.expect = Expect::Reply(Shape::Script(script_names(&name, &client)));
        }
        // Last, for the prelude: the tenant's prefix (a marked empty argument is the prefix
        // itself) and whether Redis must confine the script.
        let mode = match confinement {
            Confinement::User { .. } => "c",
            Confinement::Unconfined => "u",
        };
        fwd.prefixed.set(fwd.args.len());
        fwd.args.push(Bytes::new());
        fwd.args.push(Bytes::from_static(mode.as_bytes()));
        let top = if kind == ScriptCmd::Eval {
            &b"eval"[..]
        } else {
            b"evalsha"
        };
        self.send_script(fwd, cost, &tenant, confinement, top).await
    }

    /// A script or function call, charged like a write, sent as the tenant's ACL user (or
    /// respite's own), under the tenant's timeout.
    async fn send_script(
        &mut self,
        fwd: Forward,
        cost: Option<WriteCost>,
        tenant: &Tenant,
        confinement: Confinement,
        top: &'static [u8],
    ) -> Result<(), End> {
        let send = ScriptSend {
            auth: match confinement {
                Confinement::User { auth } => Some(auth),
                Confinement::Unconfined => None,
            },
            timeout: Duration::from_millis(tenant.scripts.timeout_ms),
        };
        let Some(written) = self.charge(cost, top).await else {
            return Ok(());
        };
        self.forward(fwd, top, written, Some(send)).await
    }

    /// FUNCTION LOAD, DELETE, LIST and FLUSH, for the tenant's own libraries.
    async fn library(
        &mut self,
        kind: ScriptCmd,
        args: &[Bytes],
        tenant: &Tenant,
    ) -> Result<Bytes, Error> {
        let (own, prelude) = (&self.ctx.own, &self.ctx.scripts.prelude);
        match kind {
            ScriptCmd::FunctionLoad => {
                let (code, options) = args[2..].split_last().expect("arity");
                let mut replace = false;
                for o in options {
                    if !o.eq_ignore_ascii_case(b"replace") {
                        let o = String::from_utf8_lossy(o);
                        return Err(Error::Unsupported(format!("Unknown option given: {o}")));
                    }
                    replace = true;
                }
                let confined = !tenant.scripts.unconfined;
                library::load(own, prelude, tenant, confined, replace, code).await
            }
            ScriptCmd::FunctionDelete => library::delete(own, tenant, &args[2]).await,
            ScriptCmd::FunctionFlush => {
                let mode_ok =
                    |a: &Bytes| a.eq_ignore_ascii_case(b"async") || a.eq_ignore_ascii_case(b"sync");
                if args.len() > 3 || args.get(2).is_some_and(|a| !mode_ok(a)) {
                    return Err(Error::Syntax);
                }
                library::flush(own, prelude, tenant).await
            }
            _ => {
                let (pattern, with_code) = list_options(&args[2..])?;
                let libraries = library::list(own, prelude, tenant, &pattern, with_code).await?;
                Ok(library::encode_list(&libraries, self.state.protocol))
            }
        }
    }

    /// SCRIPT LOAD: Redis loads the wrapped script; the client gets its own script's name.
    async fn load_script(
        &mut self,
        body: &Bytes,
        tenant: &Tenant,
    ) -> Result<Result<Bytes, Error>, End> {
        let client = sha1_hex(body);
        let wrapped = self.ctx.scripts.prelude.wrap(body);
        if self.ctx.upstream.cluster.is_some() {
            // Every node's script cache: an EVALSHA goes wherever its keys are.
            let loaded = self
                .ctx
                .own
                .run(async |c| {
                    deadpool_redis::redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(&wrapped[..])
                        .query_async::<String>(c)
                        .await
                })
                .await;
            let name = match loaded {
                Ok(name) => name,
                Err(e) => return Ok(Err(e.for_client(UpstreamError::Bookkeeping))),
            };
            let Ok(name) = <[u8; 40]>::try_from(name.as_bytes()) else {
                return Ok(Err(Error::Upstream(UpstreamError::Protocol(
                    "SCRIPT LOAD answered no SHA1".into(),
                ))));
            };
            return Ok(self
                .ctx
                .scripts
                .record(tenant, client, name)
                .await
                .map(|()| crate::wire::Resp::bulk(&client)));
        }
        self.drain().await?;
        let reply = match self.call(&[b"SCRIPT", b"LOAD", &wrapped]).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(Error::Upstream(e))),
        };
        let Some(name) = reply
            .text()
            .and_then(|n| <[u8; 40]>::try_from(n).ok())
            .filter(|_| !reply.is_error())
        else {
            // Redis' own error (the script does not compile): as Redis said it.
            return Ok(Ok(reply.raw));
        };
        Ok(self
            .ctx
            .scripts
            .record(tenant, client, name)
            .await
            .map(|()| crate::wire::Resp::bulk(&client)))
    }

    /// SCRIPT EXISTS: the tenant loaded the script, and Redis still has it.
    async fn scripts_exist(
        &mut self,
        shas: &[Bytes],
        tenant: &Tenant,
    ) -> Result<Result<Bytes, Error>, End> {
        let mut names = Vec::with_capacity(shas.len());
        for sha in shas {
            let client = <[u8; 40]>::try_from(&sha.to_ascii_lowercase()[..]).ok();
            let name = match client {
                Some(c) => match self.ctx.scripts.lookup(tenant, &c).await {
                    Ok(n) => n,
                    Err(e) => return Ok(Err(e)),
                },
                None => None,
            };
            names.push(name);
        }
        let known: Vec<&[u8]> = names.iter().flatten().map(|n| &n[..]).collect();
        let mut in_redis = Vec::new();
        if !known.is_empty() {
            self.drain().await?;
            let mut ask: Vec<&[u8]> = vec![b"SCRIPT", b"EXISTS"];
            ask.extend(known);
            match self.call(&ask).await {
                Ok(r) if r.is_error() => return Ok(Ok(r.raw)),
                Ok(r) => in_redis = integers(&r),
                Err(e) => return Ok(Err(Error::Upstream(e))),
            }
        }
        let mut in_redis = in_redis.into_iter();
        let found: Vec<i64> = names
            .iter()
            .map(|n| match n {
                Some(_) => in_redis.next().unwrap_or(0),
                None => 0,
            })
            .collect();
        let mut out = bytes::BytesMut::new();
        crate::wire::Resp::put_array_len(&mut out, found.len());
        for n in found {
            out.extend_from_slice(&crate::wire::Resp::int(n));
        }
        Ok(Ok(out.freeze()))
    }

    /// Refuses the script (counted as refused); the session goes on.
    fn refuse_counted(&mut self, e: Error) -> Result<(), End> {
        self.refuse(e);
        self.count(Outcome::Refused, None);
        Ok(())
    }
}

/// The integers of an array reply (SCRIPT EXISTS).
fn integers(frame: &Frame) -> Vec<i64> {
    use redis_protocol::resp3::types::RangeFrame;
    frame
        .elements()
        .unwrap_or_default()
        .iter()
        .map(|e| match e {
            RangeFrame::Number { data, .. } => *data,
            _ => 0,
        })
        .collect()
}

/// FUNCTION LIST's options as Redis reads them: `LIBRARYNAME <pattern>` and `WITHCODE`, each
/// at most once, in any order.
fn list_options(args: &[Bytes]) -> Result<(Bytes, bool), Error> {
    let (mut pattern, mut with_code) = (None, false);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if !with_code && a.eq_ignore_ascii_case(b"withcode") {
            with_code = true;
        } else if pattern.is_none() && a.eq_ignore_ascii_case(b"libraryname") {
            i += 1;
            let Some(p) = args.get(i) else {
                return Err(Error::Unsupported(
                    "library name argument was not given".into(),
                ));
            };
            pattern = Some(p.clone());
        } else {
            let a = String::from_utf8_lossy(a);
            return Err(Error::Unsupported(format!("Unknown argument {a}")));
        }
        i += 1;
    }
    Ok((pattern.unwrap_or(Bytes::from_static(b"*")), with_code))
}

/// The wrapped script's name, then the tenant's, for [`Shape::Script`].
fn script_names(wrapped: &[u8; 40], own: &[u8; 40]) -> Box<[u8; 80]> {
    let mut names = Box::new([0u8; 80]);
    names[..40].copy_from_slice(wrapped);
    names[40..].copy_from_slice(own);
    names
}
