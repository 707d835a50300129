//! One QMP connection to one QEMU: connect, negotiate, run commands, map errors to [`VmmError`].
//! Typed commands come from `qapi-qmp`; the few whose replies or arguments that schema types
//! too rigidly for a newer QEMU are the serde types at the end of this file.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use qapi::{Command, ExecuteError, Qmp, Stream};
use serde::{Deserialize, Serialize};

use crate::error::{Result, VmmError};

/// How long one QMP reply may take: block commands of a paused VM answer in milliseconds, but
/// a loaded TCG host can stall QEMU's main loop for seconds.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

type QmpStream = Stream<BufReader<UnixStream>, UnixStream>;

/// A negotiated QMP session with one VM.
pub struct QmpClient {
    vm: String,
    qmp: Qmp<QmpStream>,
}

impl QmpClient {
    /// Connects to the socket and leaves capability negotiation mode.
    pub fn connect(vm: &str, socket: &Path) -> Result<Self> {
        let io_err = |command: &str, source| VmmError::QmpIo {
            vm: vm.to_string(),
            command: command.to_string(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(|e| io_err("connect", e))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| io_err("connect", e))?;
        let write_half = stream.try_clone().map_err(|e| io_err("connect", e))?;

        // The greeting is read here rather than by qapi, whose reader panics on a closed socket.
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        let read = reader
            .read_line(&mut greeting)
            .map_err(|e| io_err("greeting", e))?;
        if read == 0 || !greeting.contains("\"QMP\"") {
            return Err(io_err(
                "greeting",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no QMP greeting"),
            ));
        }

        let mut client = QmpClient {
            vm: vm.to_string(),
            qmp: Qmp::new(Stream::new(reader, write_half)),
        };
        client.execute(&qapi::qmp::qmp_capabilities { enable: None })?;
        Ok(client)
    }

    /// Runs one command; a QMP error reply becomes [`VmmError::Qmp`] with QEMU's message.
    pub fn execute<C: Command>(&mut self, command: &C) -> Result<C::Ok> {
        let result = self.qmp.execute(command);
        self.qmp.events().for_each(drop);
        result.map_err(|error| match error {
            ExecuteError::Qapi(e) => VmmError::Qmp {
                vm: self.vm.clone(),
                command: C::NAME.to_string(),
                desc: e.desc,
            },
            ExecuteError::Io(source) => VmmError::QmpIo {
                vm: self.vm.clone(),
                command: C::NAME.to_string(),
                source,
            },
        })
    }

    pub fn vm(&self) -> &str {
        &self.vm
    }
}

macro_rules! qmp_command {
    ($ty:ty, $name:literal, $ok:ty) => {
        impl Command for $ty {
            type Ok = $ok;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
    };
}

/// `query-named-block-nodes {flat: true}`, decoding only the fields cosnap reads, so that a
/// QEMU newer than the `qapi-qmp` schema cannot break the reply with a new enum value.
#[derive(Debug, Serialize)]
pub struct QueryNamedBlockNodes {
    pub flat: bool,
}
qmp_command!(
    QueryNamedBlockNodes,
    "query-named-block-nodes",
    Vec<NamedNode>
);

#[derive(Debug, Deserialize)]
pub struct NamedNode {
    #[serde(rename = "node-name", default)]
    pub node_name: String,
    pub drv: String,
    pub file: String,
    #[serde(default)]
    pub backing_file: Option<String>,
    pub ro: bool,
    #[serde(rename = "dirty-bitmaps", default)]
    pub dirty_bitmaps: Vec<NamedBitmap>,
}

#[derive(Debug, Deserialize)]
pub struct NamedBitmap {
    #[serde(default)]
    pub name: String,
}

/// `query-block`: which node each guest device reads through now.
#[derive(Debug, Serialize)]
pub struct QueryBlock {}
qmp_command!(QueryBlock, "query-block", Vec<BlockInfo>);

#[derive(Debug, Deserialize)]
pub struct BlockInfo {
    #[serde(default)]
    pub qdev: Option<String>,
    #[serde(default)]
    pub inserted: Option<InsertedNode>,
}

#[derive(Debug, Deserialize)]
pub struct InsertedNode {
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
}

/// `blockdev-add` of a qcow2 layer with its file node inline and no backing opened (the
/// backing is attached by `blockdev-snapshot`).
#[derive(Debug, Serialize)]
pub struct BlockdevAddOverlay {
    pub driver: &'static str,
    #[serde(rename = "node-name")]
    pub node_name: String,
    pub file: FileNode,
    pub backing: Option<String>,
}
qmp_command!(BlockdevAddOverlay, "blockdev-add", qapi::Empty);

#[derive(Debug, Serialize)]
pub struct FileNode {
    pub driver: &'static str,
    pub filename: String,
    #[serde(rename = "node-name")]
    pub node_name: String,
}
