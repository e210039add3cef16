//! One client connection: framing, limits and the peer check. Nothing a
//! client sends can crash the daemon or make it hang: oversized lines,
//! random bytes and invalid JSON each get an error response. An idle
//! connection is closed after the idle timeout, and a stream notices a
//! client that went away while it waits for news.

use super::{handlers, limits, Access, Pool};
use crate::protocol::{error_response, Request, MAX_REQUEST_BYTES};
use crate::service::Service;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;

/// The least room a read of a request is given (the line buffer grows
/// by at least this much when it is full).
const READ_CHUNK: usize = 16 * 1024;

/// Which slot a connection holds.
#[derive(Debug, Clone, Copy)]
pub enum Tier {
    /// Any request.
    Ordinary,
    /// Over the ordinary cap (`limit`): only `health`, `get` and `cancel`.
    Reserve {
        /// The ordinary cap, for the error message.
        limit: usize,
    },
}

/// The slot a connection holds, given back when it ends.
pub struct Slot {
    pool: Arc<Pool>,
    tier: Tier,
    /// Given to a newcomer when this connection is evicted.
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// A slot of `pool`, held while `permit` lives.
    pub fn new(pool: Arc<Pool>, tier: Tier, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            pool,
            tier,
            permit: Some(permit),
        }
    }
}

/// Writes response lines, and watches the read side for the client
/// leaving while a stream runs.
pub struct Responder {
    out: BufWriter<OwnedWriteHalf>,
    rd: OwnedReadHalf,
    /// Bytes read but not yet served (requests sent during a stream).
    inbuf: Vec<u8>,
    /// The client closed its side (EOF or error).
    gone: bool,
}

impl Responder {
    /// Send one response line. False when the client has gone.
    pub async fn send(&mut self, line: &str) -> bool {
        self.out.write_all(line.as_bytes()).await.is_ok()
            && self.out.write_all(b"\n").await.is_ok()
            && self.out.flush().await.is_ok()
    }

    /// Wait `d` between stream updates; false as soon as the client has
    /// closed the connection (so a departed `--follow` client frees its
    /// handle at once, not when the operation ends).
    pub async fn pause(&mut self, d: Duration) -> bool {
        if self.gone {
            return false;
        }
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        let mut chunk = [0u8; 4096];
        loop {
            // Stop reading once a full request is waiting: it is served
            // when the stream ends.
            if self.inbuf.len() > MAX_REQUEST_BYTES {
                sleep.as_mut().await;
                return true;
            }
            tokio::select! {
                _ = &mut sleep => return true,
                r = self.rd.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => {
                        self.gone = true;
                        return false;
                    }
                    Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                },
            }
        }
    }

    /// Read more bytes into the buffer; false on EOF, error, idle timeout
    /// or when a newcomer needs this idle connection's slot.
    async fn fill(&mut self, idle: Option<Duration>, slot: &mut Slot) -> bool {
        if self.gone {
            return false;
        }
        // Read straight into the line buffer's spare room: no buffer of
        // its own to allocate and zero for every read.
        self.inbuf.reserve(READ_CHUNK);
        let (key, evicted) = slot.pool.idle();
        let (rd, inbuf) = (&mut self.rd, &mut self.inbuf);
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, rd.read_buf(inbuf)).await.ok(),
                None => Some(rd.read_buf(inbuf).await),
            }
        };
        let r = tokio::select! {
            r = read => r,
            Ok(to) = evicted => {
                if let Some(p) = slot.permit.take() {
                    let _ = to.send(p);
                }
                None
            }
        };
        slot.pool.busy(key);
        let Some(r) = r else {
            return false;
        };
        match r {
            Ok(0) | Err(_) => false,
            Ok(_) => true,
        }
    }
}

async fn allowed(stream: &UnixStream, access: Access) -> bool {
    let Ok(cred) = stream.peer_cred() else {
        return false;
    };
    if limits::admits(access, cred.uid(), cred.gid(), &[]) {
        return true;
    }
    if access.gid.is_none() {
        return false;
    }
    // The group database may be a network service (LDAP, sssd): asked
    // off the async thread, which serves every other connection.
    let (pid, uid, gid) = (cred.pid(), cred.uid(), cred.gid());
    tokio::task::spawn_blocking(move || {
        limits::admits(access, uid, gid, &limits::peer_groups(pid, uid, gid))
    })
    .await
    .unwrap_or(false)
}

/// Serve one connection until the client closes it or stays idle longer
/// than `idle`.
pub async fn handle(
    stream: UnixStream,
    service: Service,
    access: Access,
    mut slot: Slot,
    idle: Option<Duration>,
) {
    let permitted = allowed(&stream, access).await;
    let (rd, wr) = stream.into_split();
    let mut out = Responder {
        out: BufWriter::new(wr),
        rd,
        inbuf: Vec::with_capacity(4096),
        gone: false,
    };
    if !permitted {
        out.send(
            &error_response(
                "permission_denied",
                "this user may not use this opsd; ask its owner to set socket_group",
            )
            .to_string(),
        )
        .await;
        return;
    }
    // True while skipping the rest of an oversized line.
    let mut discarding = false;
    loop {
        // Serve every complete line already buffered.
        while let Some(pos) = out.inbuf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = out.inbuf.drain(..=pos).collect();
            if discarding {
                discarding = false;
                continue;
            }
            let line = &line[..line.len() - 1];
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if !serve_line(line, &service, &mut out, slot.tier).await {
                return;
            }
        }
        if out.inbuf.len() > MAX_REQUEST_BYTES {
            if !discarding {
                let msg = format!("request line over {} bytes", MAX_REQUEST_BYTES);
                if !out
                    .send(&error_response("too_large", &msg).to_string())
                    .await
                {
                    return;
                }
            }
            discarding = true;
            out.inbuf.clear();
        }
        if !out.fill(idle, &mut slot).await {
            return;
        }
    }
}

async fn serve_line(line: &[u8], service: &Service, out: &mut Responder, tier: Tier) -> bool {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return out
                .send(&error_response("bad_request", &format!("invalid JSON: {e}")).to_string())
                .await
        }
    };
    let cmd = value.get("cmd").and_then(Value::as_str).map(str::to_string);
    let request: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            let msg = match cmd {
                None => "missing \"cmd\"; see the protocol in ARCHITECTURE.md".to_string(),
                Some(c) => format!("bad {c:?} request: {}", plain_serde(&e.to_string())),
            };
            return out
                .send(&error_response("bad_request", &msg).to_string())
                .await;
        }
    };
    if let Tier::Reserve { limit } = tier {
        if !matches!(
            request,
            Request::Health | Request::Get { .. } | Request::Cancel { .. }
        ) {
            let msg = format!(
                "opsd is serving {limit} connections, its limit; only health, get and cancel are \
                 answered now. Close idle clients, or raise the daemon's open-file limit (LimitNOFILE)"
            );
            return out
                .send(&error_response("unavailable", &msg).to_string())
                .await;
        }
    }
    handlers::dispatch(request, service, out).await
}

/// A decoding error in words about the request: serde's `unknown variant
/// `bogus`, expected one of `a`, `b`` becomes "`bogus` is not a valid
/// value; use one of a, b".
fn plain_serde(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        if let Some((bad, tail)) = rest.split_once('`') {
            let choices = tail
                .split_once("expected one of ")
                .or_else(|| tail.split_once("expected "))
                .map(|(_, c)| c.replace('`', ""))
                .unwrap_or_default();
            return format!("{bad:?} is not a valid value; use one of {choices}");
        }
    }
    msg.to_string()
}
