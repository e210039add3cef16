//! A blocking client for the daemon's socket, used by the CLI and tests.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers on the socket.
    #[error("cannot reach opsd at {path}: {source}. Is the daemon running? Start it with `opsd serve` (or pass --socket)")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("lost the connection to opsd: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// The daemon's answer was not JSON.
    #[error("opsd sent an unreadable response: {0}")]
    Protocol(String),
}

/// One connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connect to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|e| ClientError::Connect {
            path: path.display().to_string(),
            source: e,
        })?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Wait at most `d` for each response line (`None`: forever).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> Result<(), ClientError> {
        Ok(self.writer.set_read_timeout(d)?)
    }

    /// Send one request line.
    pub fn send(&mut self, request: &Value) -> Result<(), ClientError> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Read one response line; `Ok(None)` when the daemon closed the
    /// connection. Errors (`"ok": false`) become [`ClientError::Daemon`].
    pub fn recv(&mut self) -> Result<Option<Value>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(Some(v))
        } else {
            Err(ClientError::Daemon {
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_string(),
            })
        }
    }

    /// Send a request and read its single response.
    pub fn request(&mut self, request: &Value) -> Result<Value, ClientError> {
        self.send(request)?;
        self.recv()?
            .ok_or_else(|| ClientError::Protocol("the daemon closed the connection".into()))
    }
}

/// Connect, send one request, return its response.
pub fn call(path: &Path, request: &Value) -> Result<Value, ClientError> {
    Client::connect(path)?.request(request)
}
