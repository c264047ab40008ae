//! The daemon's QMP monitor (`--chardev socket,...` + `--monitor chardev=..`), served
//! by the [`qmp`] crate on the main loop: block-node's `blockdev-add`,
//! `blockdev-del`, `query-named-block-nodes` (and `query-block`), and the daemon's
//! `block-export-add`, `block-export-del`, `query-block-exports`, `device_add` /
//! `device_del` of scsi-hd LUNs on a vhost-user-scsi export, and `quit`. Replies and
//! errors are qemu-storage-daemon 10's where it has the command.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use aio_context::AioContext;
use qmp::{Commands, QmpError, no_arguments};
use serde_json::{Map, Value, json};

use super::args::{Args, Json};
use super::exports::Daemon;

/// Set by `quit`, once its reply is on its way.
#[derive(Clone, Debug, Default)]
pub(crate) struct Quit(Rc<Cell<bool>>);

impl Quit {
    /// Whether `quit` was executed.
    pub(crate) fn requested(&self) -> bool {
        self.0.get()
    }
}

/// A monitor listening on `path`, its events joined to the daemon's.
pub(crate) fn start(
    ctx: &AioContext,
    daemon: &Daemon,
    path: &Path,
    quit: Quit,
) -> qmp::Result<qmp::Server> {
    let server = qmp::Server::new(ctx)?;
    server.set_version(qmp::Version {
        package: format!("vmm-bin {}", env!("CARGO_PKG_VERSION")),
        ..qmp::Version::default()
    });
    block_node::qmp::register(server.commands(), &daemon.nodes)?;
    register(server.commands(), daemon)?;
    let after = server.after_reply();
    server.commands().register("quit", move |args| {
        no_arguments(args)?;
        let q = quit.clone();
        after.push(move || q.0.set(true));
        Ok(json!({}))
    })?;
    daemon
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(server.events());
    server.listen(path)?;
    Ok(server)
}

fn generic(message: String) -> QmpError {
    QmpError::generic(message)
}

/// The export commands.
fn register(commands: &Commands, daemon: &Daemon) -> qmp::Result<()> {
    let d = daemon.clone();
    commands.register("block-export-add", move |args| {
        let spec = super::export_spec(&mut Json::new(args)).map_err(generic)?;
        d.start(&spec).map_err(generic)?;
        Ok(json!({}))
    })?;
    let d = daemon.clone();
    commands.register("block-export-del", move |args| {
        let mut a = Json::new(args);
        let id = a.required("id").map_err(generic)?;
        let hard = match a.string("mode").map_err(generic)?.as_deref() {
            None | Some("safe") => false,
            Some("hard") => true,
            Some(other) => {
                return Err(generic(format!(
                    "Parameter 'mode' does not accept value '{other}'"
                )));
            }
        };
        a.finish().map_err(generic)?;
        d.delete(&id, hard).map_err(generic)?;
        Ok(json!({}))
    })?;
    let d = daemon.clone();
    commands.register("query-block-exports", move |args| {
        no_arguments(args)?;
        Ok(Value::Array(d.exports().iter().map(|e| e.info()).collect()))
    })?;
    let d = daemon.clone();
    commands.register("device_add", move |args| device_add(&d, args))?;
    let d = daemon.clone();
    commands.register("device_del", move |args| {
        let mut a = Json::new(args);
        let id = a.required("id").map_err(generic)?;
        a.finish().map_err(generic)?;
        super::scsi::device_del(&d, &id)?;
        Ok(json!({}))
    })?;
    Ok(())
}

/// `device_add driver=scsi-hd,bus=<export>.0,drive=<node>,lun=N[,id=..][,serial=..]`.
fn device_add(daemon: &Daemon, args: &Map<String, Value>) -> qmp::QmpResult {
    let mut a = Json::new(args);
    let driver = a.required("driver").map_err(generic)?;
    if driver != "scsi-hd" {
        return Err(generic(format!(
            "Parameter 'driver' expects a pluggable device type (this daemon adds scsi-hd only), not '{driver}'"
        )));
    }
    let request = super::scsi::LunRequest {
        bus: a.required("bus").map_err(generic)?,
        drive: a.required("drive").map_err(generic)?,
        lun: a.number::<u16>("lun").map_err(generic)?.unwrap_or(0),
        scsi_id: a.number::<u16>("scsi-id").map_err(generic)?.unwrap_or(0),
        id: a.string("id").map_err(generic)?,
        serial: a.string("serial").map_err(generic)?.unwrap_or_default(),
    };
    a.finish().map_err(generic)?;
    super::scsi::device_add(daemon, &request).map_err(generic)?;
    Ok(json!({}))
}
