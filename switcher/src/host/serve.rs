//! `ferry host serve`: one session of the agent, driven over stdin and
//! stdout — what a controller runs on a host through one exec channel (or a
//! pipe, for directories on this machine), holding the host's lock for the
//! whole session.
//!
//! The protocol is request and reply, one JSON object per line:
//!
//! | request | then | reply `value` |
//! |---|---|---|
//! | (none: the session opens) | | `{"ferry": <version>}`, or the lock's error |
//! | `{"op":"status"}` | | [`Status`](super::Status) |
//! | `{"op":"stage","len":N,"options":…,"signature":…}` | N bytes: a bundle or delta | [`Staged`](super::Staged) (`signature`: the release's minisign file, optional) |
//! | `{"op":"trust","keys":[…],"replace":B}` | | [`Pinned`](super::Pinned) |
//! | `{"op":"activate","id":…,"options":…}` | | [`Flipped`](super::Flipped) |
//! | `{"op":"rollback","to":…,"reason":…}` | | [`Flipped`](super::Flipped) |
//! | `{"op":"setup","service":…,"programs":[…]}` | | what it did, a line each |
//! | `{"op":"install","service":…}` | | [`Installed`](super::runtime::Installed) (`setup --install`) |
//! | `{"op":"hook","id":…,"name":…,"command":…,"timeout_secs":N}` | | [`HookRun`](super::runtime::HookRun) |
//! | `{"op":"logs","program":…,"offsets":{…},"bytes":N}` | | [`LogChunk`](super::runtime::LogChunk)s |
//! | `{"op":"restart","id":…}` | | what it did, a line each (`id` must be current) |
//! | `{"op":"listeners","port":N}` | | [`PortHolder`](super::runtime::PortHolder)s |
//! | `{"op":"prune","keep":N}` | | [`Pruned`](super::Pruned) |
//! | `{"op":"signature"}` | | `{"len":N}`, then N bytes of signature |
//! | `{"op":"journal"}` | | every journal record, oldest first |
//! | `{"op":"admin_socket","socket":…,"command":…}` | | the load balancer's reply, as text |
//! | `{"op":"fetch","url":…,"blake3":…,"len":N,"options":…}` | | [`Staged`](super::Staged): the payload downloaded from `url`, checked, staged |
//!
//! Every reply is `{"ok":true,"value":…}` or `{"ok":false,"error":"…","kind":"…"}`
//! (the error's [`ErrorKind`](super::ErrorKind), so the controller can tell a
//! missing base from a broken link); an
//! error ends that request, not the session. A stage's payload is read to
//! its end whatever happens, so the stream stays in step. End of input ends
//! the session and releases the lock.

use std::io::{self, BufRead, Read, Write};

use ferry_formats::ReleaseId;
use serde::{Deserialize, Serialize};

use super::{error_chain, Host, HostError, Lock, StageOptions};

/// One request of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status,
    Stage {
        len: u64,
        options: StageOptions,
        /// The release's minisign signature file (see `host::trust`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// Pins minisign public keys on the host.
    Trust {
        keys: Vec<String>,
        replace: bool,
    },
    Activate {
        id: ReleaseId,
        options: StageOptions,
    },
    Rollback {
        to: Option<ReleaseId>,
        /// Recorded in the journal: why (a failed gate's evidence).
        #[serde(default)]
        reason: Option<String>,
    },
    Setup {
        service: String,
        programs: Vec<super::runtime::Program>,
    },
    /// `setup --install`: the unit or init script installed and enabled.
    Install {
        service: String,
    },
    Hook {
        id: ReleaseId,
        name: super::runtime::HookKind,
        command: String,
        timeout_secs: u64,
    },
    Logs {
        program: Option<String>,
        /// Where each process's log was read up to (for following).
        #[serde(default)]
        offsets: std::collections::BTreeMap<String, i64>,
        bytes: i32,
    },
    Restart {
        id: ReleaseId,
    },
    Listeners {
        port: u16,
    },
    Prune {
        keep: usize,
    },
    Signature,
    Journal,
    /// One command to a load balancer's admin socket on the host (see
    /// [`admin_socket`](super::admin_socket)).
    #[serde(rename = "admin_socket")]
    AdminSocket {
        socket: std::path::PathBuf,
        command: String,
    },
    /// Stage a payload the host downloads itself (see [`fetch`](super::fetch)).
    Fetch {
        url: String,
        blake3: String,
        len: u64,
        options: StageOptions,
        /// As for `stage`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
}

/// One reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's kind (`missing_base`, `delta_refused`, `locked`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<super::ErrorKind>,
}

impl Reply {
    fn of<T: Serialize>(result: Result<T, HostError>) -> Self {
        match result {
            Ok(v) => {
                Self { ok: true, value: serde_json::to_value(v).expect("replies serialize"), error: None, kind: None }
            }
            Err(e) => {
                Self { ok: false, value: serde_json::Value::Null, error: Some(error_chain(&e)), kind: Some(e.kind()) }
            }
        }
    }

    fn line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("replies serialize");
        line.push('\n');
        line
    }
}

/// Runs one session: opens it (taking the lock for `lock` when given), then
/// answers requests until the input ends. Returns an error only when the
/// streams themselves fail.
pub fn serve(host: &Host, lock: Option<&str>, input: &mut dyn BufRead, output: &mut dyn Write) -> io::Result<()> {
    let held = match lock.map(|command| host.lock(command)).transpose() {
        Ok(held) => held,
        Err(e) => {
            output.write_all(Reply::of::<()>(Err(e)).line().as_bytes())?;
            return output.flush();
        }
    };
    let hello = serde_json::json!({ "ferry": env!("CARGO_PKG_VERSION") });
    output.write_all(Reply::of(Ok(hello)).line().as_bytes())?;
    output.flush()?;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(host, held.as_ref(), request, input, output)?,
            Err(e) => Some(Reply::of::<()>(Err(HostError::Input(format!("not a request: {e}"))))),
        };
        if let Some(reply) = reply {
            output.write_all(reply.line().as_bytes())?;
        }
        output.flush()?;
    }
}

/// Answers one request; `None` when the answer was written already.
fn answer(
    host: &Host,
    lock: Option<&Lock>,
    request: Request,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> io::Result<Option<Reply>> {
    let locked = || lock.ok_or_else(|| HostError::Input("this session holds no lock; open it with --lock".into()));
    Ok(Some(match request {
        Request::Status => Reply::of(host.status()),
        Request::Stage { len, options, signature } => {
            let mut payload = input.take(len);
            let staged = locked().and_then(|lock| host.stage(lock, &mut payload, &options, signature.as_deref()));
            // Whatever the stage read, the payload ends where the
            // controller said: read what is left, to stay in step.
            io::copy(&mut payload, &mut io::sink())?;
            Reply::of(staged)
        }
        Request::Activate { id, options } => Reply::of(locked().and_then(|lock| host.activate(lock, &id, &options))),
        Request::Rollback { to, reason } => {
            Reply::of(locked().and_then(|lock| host.rollback_because(lock, to.as_ref(), reason)))
        }
        Request::Setup { service, programs } => Reply::of(locked().and_then(|_| host.setup(&service, &programs))),
        Request::Install { service } => Reply::of(locked().and_then(|_| host.install(&service))),
        Request::Hook { id, name, command, timeout_secs } => Reply::of(
            locked().and_then(|_| host.run_hook(&id, name, &command, std::time::Duration::from_secs(timeout_secs))),
        ),
        Request::Logs { program, offsets, bytes } => Reply::of(host.logs(program.as_deref(), &offsets, bytes)),
        Request::Restart { id } => Reply::of(locked().and_then(|lock| host.restart(lock, &id))),
        Request::Listeners { port } => Reply::of(host.listeners(port)),
        Request::Trust { keys, replace } => Reply::of(locked().and_then(|_| host.pin_keys(&keys, replace))),
        Request::Prune { keep } => Reply::of(locked().and_then(|lock| host.prune(lock, keep))),
        Request::Journal => Reply::of(host.journal()),
        Request::Fetch { url, blake3, len, options, signature } => {
            let fetch = super::fetch::Fetch { url, blake3, len };
            Reply::of(locked().and_then(|lock| host.stage_fetched(lock, &fetch, &options, signature.as_deref())))
        }
        Request::AdminSocket { socket, command } => {
            Reply::of(super::admin_socket::command(&socket, &command, super::admin_socket::TIMEOUT))
        }
        Request::Signature => match locked().and_then(|lock| host.signature(lock)) {
            Ok(signature) => {
                let bytes = signature.to_bytes();
                let head = Reply::of(Ok(serde_json::json!({ "len": bytes.len() })));
                output.write_all(head.line().as_bytes())?;
                output.write_all(&bytes)?;
                return Ok(None);
            }
            Err(e) => Reply::of::<()>(Err(e)),
        },
    }))
}
