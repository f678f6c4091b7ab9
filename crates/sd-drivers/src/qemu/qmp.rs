//! A QMP client: QEMU's JSON machine protocol over the VM's Unix socket.
//!
//! One command at a time: each command is a JSON line, answered by `{"return": ...}` or
//! `{"error": ...}`; asynchronous events (`{"event": ...}`) arriving in between are skipped.
//! Every exchange has a deadline, so a wedged VMM cannot hang its supervisor, and a reply
//! larger than [`MAX_REPLY`] is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::{Error, Result};

/// The largest reply line accepted.
pub const MAX_REPLY: usize = 1 << 20;

/// How long one command may take.
const DEADLINE: Duration = Duration::from_secs(5);

/// An open QMP session, capabilities negotiated.
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

fn failed(socket: &Path, reason: impl Into<String>) -> Error {
    Error::Qmp {
        socket: socket.to_path_buf(),
        reason: reason.into(),
    }
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and enters command mode.
    pub async fn connect(socket: &Path) -> Result<Qmp> {
        let stream = tokio::time::timeout(DEADLINE, UnixStream::connect(socket))
            .await
            .map_err(|_| failed(socket, "no answer within 5 s"))?
            .map_err(|e| failed(socket, format!("cannot connect: {e}")))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(failed(socket, format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = tokio::time::timeout(DEADLINE, async {
                let mut limited = (&mut self.reader).take(MAX_REPLY as u64 + 1);
                limited.read_until(b'\n', &mut line).await
            })
            .await
            .map_err(|_| failed(&self.socket, "no answer within 5 s"))?
            .map_err(|e| failed(&self.socket, format!("read: {e}")))?;
            if read == 0 {
                return Err(failed(&self.socket, "QEMU closed the connection"));
            }
            if line.len() > MAX_REPLY {
                return Err(failed(&self.socket, "reply larger than 1 MiB"));
            }
            let message: Value = serde_json::from_slice(&line)
                .map_err(|e| failed(&self.socket, format!("bad JSON from QEMU: {e}")))?;
            if message.get("event").is_none() {
                return Ok(message);
            }
        }
    }

    /// Runs one command; returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        tokio::time::timeout(DEADLINE, self.writer.write_all(text.as_bytes()))
            .await
            .map_err(|_| failed(&self.socket, "write blocked for 5 s"))?
            .map_err(|e| failed(&self.socket, format!("write: {e}")))?;
        let reply = self.read_message().await?;
        if let Some(value) = reply.get("return") {
            return Ok(value.clone());
        }
        let reason = reply
            .pointer("/error/desc")
            .and_then(Value::as_str)
            .map_or_else(|| reply.to_string(), str::to_string);
        Err(failed(
            &self.socket,
            format!("`{command}` failed: {reason}"),
        ))
    }

    /// The VM's run state (`running`, `paused`, `shutdown` ...).
    pub async fn status(&mut self) -> Result<String> {
        let value = self.execute("query-status", None).await?;
        Ok(value
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// Asks the guest to power off (ACPI power button, or the platform's equivalent).
    pub async fn powerdown(&mut self) -> Result<()> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Ends QEMU at once.
    pub async fn quit(&mut self) -> Result<()> {
        self.execute("quit", None).await.map(drop)
    }

    /// Sets the guest's memory through the balloon device, in MiB.
    pub async fn set_balloon(&mut self, mib: u64) -> Result<()> {
        self.execute("balloon", Some(json!({ "value": mib << 20 })))
            .await
            .map(drop)
    }

    /// The guest's memory as the balloon reports it, in MiB.
    pub async fn balloon(&mut self) -> Result<u64> {
        let value = self.execute("query-balloon", None).await?;
        value
            .get("actual")
            .and_then(Value::as_u64)
            .map(|bytes| bytes >> 20)
            .ok_or_else(|| failed(&self.socket, format!("query-balloon gave {value}")))
    }
}
