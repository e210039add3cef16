//! One client connection: framing, limits and the peer check. Nothing a
//! client sends can crash the daemon or make it hang: oversized lines,
//! random bytes and invalid JSON each get an error response.

use super::{handlers, Access};
use crate::protocol::{error_response, Request, MAX_REQUEST_BYTES};
use crate::service::Service;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

/// Writes response lines.
pub struct Responder {
    out: BufWriter<OwnedWriteHalf>,
}

impl Responder {
    /// Send one response line. False when the client has gone.
    pub async fn send(&mut self, v: &Value) -> bool {
        let mut line = v.to_string();
        line.push('\n');
        self.out.write_all(line.as_bytes()).await.is_ok() && self.out.flush().await.is_ok()
    }
}

fn allowed(stream: &UnixStream, access: Access) -> bool {
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == 0 || cred.uid() == access.uid || access.gid == Some(cred.gid()),
        Err(_) => false,
    }
}

/// Serve one connection until the client closes it.
pub async fn handle(stream: UnixStream, service: Service, access: Access) {
    let permitted = allowed(&stream, access);
    let (mut rd, wr) = stream.into_split();
    let mut out = Responder {
        out: BufWriter::new(wr),
    };
    if !permitted {
        out.send(&error_response(
            "permission_denied",
            "this user may not use this opsd; ask its owner to set socket_group",
        ))
        .await;
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    // True while skipping the rest of an oversized line.
    let mut discarding = false;
    loop {
        // Serve every complete line already buffered.
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if discarding {
                discarding = false;
                continue;
            }
            let line = &line[..line.len() - 1];
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if !serve_line(line, &service, &mut out).await {
                return;
            }
        }
        if buf.len() > MAX_REQUEST_BYTES {
            if !discarding {
                let msg = format!("request line over {} bytes", MAX_REQUEST_BYTES);
                if !out.send(&error_response("too_large", &msg)).await {
                    return;
                }
            }
            discarding = true;
            buf.clear();
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_line(line: &[u8], service: &Service, out: &mut Responder) -> bool {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return out
                .send(&error_response(
                    "bad_request",
                    &format!("invalid JSON: {e}"),
                ))
                .await
        }
    };
    let cmd = value.get("cmd").and_then(Value::as_str).map(str::to_string);
    let request: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            let msg = match cmd {
                None => "missing \"cmd\"; see the protocol in ARCHITECTURE.md".to_string(),
                Some(c) => format!("bad {c:?} request: {e}"),
            };
            return out.send(&error_response("bad_request", &msg)).await;
        }
    };
    handlers::dispatch(request, service, out).await
}
