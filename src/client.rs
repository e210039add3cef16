//! The one client of the daemon's socket: the CLI, the integration tests
//! and the benchmarks all speak to opsd through it. Requests are
//! [`Request`] values and answers the typed bodies of `crate::protocol`;
//! `value` and the `*_line` methods give the raw JSON for callers that
//! check the wire itself (protocol tests, benchmarks that pre-serialize).

use crate::ids::OperationId;
use crate::protocol::{
    Cancelled, CheckpointList, Deleted, ErrorReply, Got, Health, Listed, MetricsPage,
    OperationView, Reply, Request, Resumed, Submit, Submitted, SubmittedBatch,
};
use crate::store::records::ListFilter;
use serde::de::DeserializeOwned;
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
    /// The daemon's answer was not what the protocol says.
    #[error("opsd sent an unreadable response: {0}. Are the client and the daemon the same version (`opsd health`)?")]
    Protocol(String),
}

impl ClientError {
    /// True when waiting for a line timed out (see [`Client::set_read_timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ))
    }
}

/// One connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
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
            line: String::new(),
        })
    }

    /// Wait at most `d` for each response line (`None`: forever).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> Result<(), ClientError> {
        Ok(self.writer.set_read_timeout(d)?)
    }

    /// Send one request.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        self.send_line(&request.to_line())
    }

    /// Send bytes that are already a request line (ending in `\n`), as
    /// benchmarks do to keep serialization out of what they measure.
    pub fn send_line(&mut self, line: &[u8]) -> Result<(), ClientError> {
        self.writer.write_all(line)?;
        Ok(())
    }

    /// Read one response line as it came (without interpreting it);
    /// `Ok(None)` when the daemon closed the connection.
    pub fn recv_line(&mut self) -> Result<Option<&str>, ClientError> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Ok(None);
        }
        Ok(Some(&self.line))
    }

    /// Read one response as JSON, failures included (`"ok": false`).
    pub fn recv_value(&mut self) -> Result<Option<Value>, ClientError> {
        match self.recv_line()? {
            None => Ok(None),
            Some(l) => serde_json::from_str(l)
                .map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    }

    /// Read one response as the body `T`; a failure (`"ok": false`)
    /// becomes [`ClientError::Daemon`].
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        let Some(v) = self.recv_value()? else {
            return Ok(None);
        };
        decode(v).map(Some)
    }

    /// Send a request and read its single response as `T`.
    pub fn request<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        self.send(request)?;
        self.recv()?.ok_or_else(closed)
    }

    /// Send a request and read its single response as JSON, failures
    /// included: for callers that check the wire format itself.
    pub fn value(&mut self, request: &Request) -> Result<Value, ClientError> {
        self.send(request)?;
        self.recv_value()?.ok_or_else(closed)
    }

    /// `submit`.
    pub fn submit(&mut self, s: Submit) -> Result<Submitted, ClientError> {
        self.request(&Request::Submit(s))
    }

    /// `submit_batch`: all in one durable commit.
    pub fn submit_batch(&mut self, operations: Vec<Submit>) -> Result<SubmittedBatch, ClientError> {
        self.request(&Request::SubmitBatch { operations })
    }

    /// `get`: one operation, live progress included.
    pub fn get(&mut self, id: &OperationId) -> Result<OperationView, ClientError> {
        self.request::<Got>(&Request::get(id.clone()))
            .map(|g| g.operation)
    }

    /// `list`.
    pub fn list(&mut self, filter: ListFilter) -> Result<Listed, ClientError> {
        self.request(&Request::List(filter))
    }

    /// `children` of `id`.
    pub fn children(&mut self, id: &OperationId) -> Result<Vec<OperationView>, ClientError> {
        self.request::<Listed>(&Request::children(id.clone()))
            .map(|l| l.operations)
    }

    /// `cancel` of `id` and its descendants.
    pub fn cancel(
        &mut self,
        id: &OperationId,
        reason: Option<String>,
        wait_ms: Option<u64>,
    ) -> Result<Cancelled, ClientError> {
        self.request(&Request::Cancel {
            id: id.clone(),
            reason,
            wait_ms,
        })
    }

    /// `resume`.
    pub fn resume(&mut self, id: &OperationId) -> Result<Resumed, ClientError> {
        self.request(&Request::resume(id.clone()))
    }

    /// One page of `metrics` after `cursor` (at most `limit` points).
    pub fn metrics(
        &mut self,
        id: &OperationId,
        cursor: i64,
        limit: Option<i64>,
    ) -> Result<MetricsPage, ClientError> {
        self.request(&Request::Metrics {
            id: id.clone(),
            cursor,
            limit,
            follow: false,
        })
    }

    /// `checkpoints`, of `id` or of all.
    pub fn checkpoints(&mut self, id: Option<OperationId>) -> Result<CheckpointList, ClientError> {
        self.request(&Request::checkpoints(id))
    }

    /// `delete_checkpoint`.
    pub fn delete_checkpoint(&mut self, id: &OperationId) -> Result<Deleted, ClientError> {
        self.request(&Request::DeleteCheckpoint { id: id.clone() })
    }

    /// `health`.
    pub fn health(&mut self) -> Result<Health, ClientError> {
        self.request(&Request::Health)
    }

    /// `hosts`: the daemons sharing the daemon's store.
    pub fn hosts(&mut self) -> Result<crate::protocol::HostList, ClientError> {
        self.request(&Request::Hosts)
    }
}

fn closed() -> ClientError {
    ClientError::Protocol("the daemon closed the connection".into())
}

/// A response as the body `T`, or the daemon's error.
fn decode<T: DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        serde_json::from_value::<Reply<T>>(v)
            .map(|r| r.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    } else {
        match serde_json::from_value::<ErrorReply>(v) {
            Ok(e) => Err(ClientError::Daemon {
                code: e.error.code,
                message: e.error.message,
            }),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }
}

/// Connect, send one request, return its response as `T`.
pub fn call<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T, ClientError> {
    Client::connect(path)?.request(request)
}
