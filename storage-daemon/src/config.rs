//! The command line: each option's grammar, and the checks across options.

use std::path::PathBuf;

use block_node::BlockdevOptions;
use qemu_opts::{Grammar, Opts};

use crate::{Error, Result, args, exports};

/// The longest `serial`: virtio-blk's device ID (`VIRTIO_BLK_ID_BYTES`).
const ID_BYTES: usize = 20;

/// An export's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// `vhost-user-blk`.
    Blk,
    /// `vhost-user-scsi`: a virtio-scsi controller, the node as LUN 0.
    Scsi,
}

impl ExportKind {
    /// The `type` value.
    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Blk => "vhost-user-blk",
            ExportKind::Scsi => "vhost-user-scsi",
        }
    }

    fn serial_len(self) -> usize {
        match self {
            ExportKind::Blk => ID_BYTES,
            ExportKind::Scsi => 36,
        }
    }

    fn serial_holder(self) -> &'static str {
        match self {
            ExportKind::Blk => "virtio-blk's device ID",
            ExportKind::Scsi => "scsi-hd's serial",
        }
    }
}

/// Where an export listens (QEMU's `SocketAddress`, the kinds it takes for
/// vhost-user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportAddr {
    /// `addr.type=unix,addr.path=PATH`.
    Unix(PathBuf),
    /// `addr.type=fd,addr.str=N`: a listening socket the caller passed as fd N.
    Fd(String),
}

/// An `--export`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// `id`.
    pub id: String,
    /// `node-name`.
    pub node: String,
    /// `type`.
    pub kind: ExportKind,
    /// `addr`.
    pub addr: ExportAddr,
    /// `writable`.
    pub writable: bool,
    /// `num-queues`.
    pub num_queues: u16,
    /// `logical-block-size`.
    pub logical_block_size: u32,
    /// `serial` (ours; vhost-user-blk: at most 20 bytes, the default is the node name,
    /// cut to fit; vhost-user-scsi: at most 36, none by default).
    pub serial: String,
    /// `iothread`: the `--object iothread` that serves it (default: one of its own).
    pub iothread: Option<String>,
}

/// An `--object iothread,id=ID[,poll-max-ns=..][,poll-grow=..][,poll-shrink=..]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IothreadSpec {
    /// `id`.
    pub id: String,
    /// The polling properties, as given.
    pub props: Opts,
}

/// A `--chardev socket,id=..,path=..,server=on[,wait=on|off]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChardevSpec {
    /// `id`.
    pub id: String,
    /// `path`.
    pub path: PathBuf,
    /// `wait`: startup waits for the first client (QEMU's default: on).
    pub wait: bool,
}

/// The whole command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Block nodes, in order.
    pub blockdevs: Vec<BlockdevOptions>,
    /// Exports.
    pub exports: Vec<ExportSpec>,
    /// Iothreads exports can name.
    pub iothreads: Vec<IothreadSpec>,
    /// Character devices monitors can use.
    pub chardevs: Vec<ChardevSpec>,
    /// `--monitor chardev=ID`: QMP monitors, by chardev.
    pub monitors: Vec<String>,
    /// `--pidfile PATH`.
    pub pidfile: Option<PathBuf>,
    /// `--daemonize`.
    pub daemonize: bool,
}

fn parse_object(text: &str) -> qemu_opts::Result<IothreadSpec> {
    let kv = Opts::parse("--object", text, Grammar::opts().implied("qom-type"))?;
    match kv.get("qom-type") {
        Some("iothread") => {}
        other => {
            return Err(kv.invalid(format!(
                "type '{}' is not supported (supported: iothread)",
                other.unwrap_or_default()
            )));
        }
    }
    let option = "--object iothread".to_owned();
    let known = ["qom-type", "id", "poll-max-ns", "poll-grow", "poll-shrink"];
    if let Some(k) = kv.unknown_keys(&known).first() {
        let key = (*k).to_owned();
        return Err(qemu_opts::Error::Unknown { option, key });
    }
    let Some(id) = kv.get("id").filter(|id| !id.is_empty()).map(str::to_owned) else {
        let key = "id".to_owned();
        return Err(qemu_opts::Error::Missing { option, key });
    };
    Ok(IothreadSpec { id, props: kv })
}

fn parse_export(text: &str) -> qemu_opts::Result<ExportSpec> {
    let kv = Opts::parse("--export", text, Grammar::keyval())?;
    let option = kv.option().to_owned();
    export_spec(&mut args::Keyval(kv))
        .map_err(|message| qemu_opts::Error::Invalid { option, message })
}

/// Reads an export's options, from the command line or from `block-export-add`
/// (QEMU's `BlockExportOptions` for vhost-user-blk, and ours for vhost-user-scsi).
pub(crate) fn export_spec(a: &mut impl args::Args) -> std::result::Result<ExportSpec, String> {
    let kind = match a.required("type")?.as_str() {
        "vhost-user-blk" => ExportKind::Blk,
        "vhost-user-scsi" => ExportKind::Scsi,
        other => {
            return Err(format!(
                "type '{other}' is not supported (supported: vhost-user-blk, vhost-user-scsi)"
            ));
        }
    };
    let id = a.required("id")?;
    let node = a.required("node-name")?;
    let addr = match a.required("addr.type")?.as_str() {
        "unix" => {
            let path = PathBuf::from(a.required("addr.path")?);
            if path.as_os_str().is_empty() {
                // An empty sun_path makes Linux autobind an abstract socket: no file,
                // so no permissions, and any local user could connect to a writable
                // export.
                return Err("addr.path must not be empty (it would bind an abstract socket, which file permissions do not protect)".into());
            }
            ExportAddr::Unix(path)
        }
        "fd" => ExportAddr::Fd(a.required("addr.str")?),
        _ => return Err("Only socket address types 'unix' and 'fd' are supported".into()),
    };
    let writable = a.flag("writable", false)?;
    let num_queues = a.number::<u16>("num-queues")?.unwrap_or(1);
    if num_queues == 0 {
        return Err("num-queues must be greater than 0".into());
    }
    let logical_block_size = a.number::<u32>("logical-block-size")?.unwrap_or(512);
    let max = kind.serial_len();
    let serial = match a.string("serial")? {
        Some(s) if s.len() > max => {
            return Err(format!(
                "serial '{s}' is {} bytes long; {} holds at most {max}",
                s.len(),
                kind.serial_holder()
            ));
        }
        Some(s) => s,
        // virtio-blk's default, the node name, is cut to fit (at a character
        // boundary); scsi-hd's is none (no VPD page 80h).
        None if kind == ExportKind::Blk => {
            let mut s = node.clone();
            while s.len() > ID_BYTES {
                s.pop();
            }
            s
        }
        None => String::new(),
    };
    let iothread = a.string("iothread")?;
    a.finish()?;
    Ok(ExportSpec {
        id,
        node,
        kind,
        addr,
        writable,
        num_queues,
        logical_block_size,
        serial,
        iothread,
    })
}

fn parse_chardev(text: &str) -> qemu_opts::Result<ChardevSpec> {
    let mut kv = Opts::parse("--chardev", text, Grammar::opts().implied("backend"))?;
    let backend = kv.required("backend")?;
    if backend != "socket" {
        return Err(kv.invalid(format!(
            "backend '{backend}' is not supported (supported: socket)"
        )));
    }
    let id = kv.required("id")?;
    let path = PathBuf::from(kv.required("path")?);
    if !kv.flag("server", false)? {
        return Err(kv.invalid("only server=on is supported"));
    }
    let wait = kv.flag("wait", true)?;
    kv.finish()?;
    Ok(ChardevSpec { id, path, wait })
}

fn parse_monitor(text: &str) -> qemu_opts::Result<String> {
    let mut kv = Opts::parse("--monitor", text, Grammar::opts().implied("chardev"))?;
    let chardev = kv.required("chardev")?;
    if let Some(mode) = kv.string("mode").filter(|m| m != "control") {
        return Err(kv.invalid(format!(
            "mode '{mode}' is not supported (supported: control)"
        )));
    }
    if kv.flag("pretty", false)? {
        return Err(kv.invalid("pretty=on is not supported"));
    }
    kv.finish()?;
    Ok(chardev)
}

/// Parses the arguments after `storage-daemon`.
///
/// # Errors
///
/// A message naming the bad option or value.
pub fn parse_args(args: &[String]) -> Result<DaemonConfig> {
    let mut config = DaemonConfig::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| Error::MissingArgument(name.to_owned()))
        };
        match name {
            "--blockdev" => config
                .blockdevs
                .push(BlockdevOptions::parse("--blockdev", &value()?).map_err(Error::Blockdev)?),
            "--export" => config.exports.push(parse_export(&value()?)?),
            "--object" => {
                let object = parse_object(&value()?)?;
                if config.iothreads.iter().any(|t| t.id == object.id) {
                    return Err(Error::DuplicateIothread(object.id));
                }
                config.iothreads.push(object);
            }
            "--chardev" => {
                let chardev = parse_chardev(&value()?)?;
                if config.chardevs.iter().any(|c| c.id == chardev.id) {
                    return Err(Error::Setup(format!(
                        "--chardev: attempt to add duplicate chardev id '{}'",
                        chardev.id
                    )));
                }
                config.chardevs.push(chardev);
            }
            "--monitor" => config.monitors.push(parse_monitor(&value()?)?),
            "--pidfile" => config.pidfile = Some(PathBuf::from(value()?)),
            "--daemonize" if inline.is_none() => config.daemonize = true,
            other => return Err(Error::UnknownOption(other.to_owned())),
        }
    }
    if config.exports.is_empty() && config.monitors.is_empty() {
        return Err(Error::NothingToDo);
    }
    check_unique(&config)?;
    for export in &config.exports {
        if let Some(id) = &export.iothread {
            if !config.iothreads.iter().any(|t| t.id == *id) {
                return Err(Error::NoIothread {
                    id: export.id.clone(),
                    iothread: id.clone(),
                });
            }
        }
    }
    for m in &config.monitors {
        if !config.chardevs.iter().any(|c| c.id == *m) {
            return Err(Error::Setup(format!("--monitor: chardev '{m}' not found")));
        }
    }
    Ok(config)
}

/// Refuses what would make two exports indistinguishable or make one export steal
/// another's socket (qemu-storage-daemon's wording where it has a check). Duplicate
/// node names are the registry's to refuse.
fn check_unique(config: &DaemonConfig) -> Result<()> {
    for (i, e) in config.exports.iter().enumerate() {
        let earlier = &config.exports[..i];
        if earlier.iter().any(|o| o.id == e.id) {
            return Err(Error::DuplicateExport(e.id.clone()));
        }
        let Some(path) = exports::socket_path(&e.addr) else {
            if earlier.iter().any(|o| o.addr == e.addr) {
                return Err(Error::Export {
                    id: e.id.clone(),
                    message: "its addr.str fd is another export's".into(),
                });
            }
            continue;
        };
        let same = |o: &&ExportSpec| {
            exports::socket_path(&o.addr).is_some_and(|p| same_socket_path(&p, &path))
        };
        if let Some(o) = earlier.iter().find(same) {
            return Err(Error::SameSocket {
                id: e.id.clone(),
                path: path.display().to_string(),
                other: o.id.clone(),
            });
        }
    }
    Ok(())
}

/// Whether two socket paths name the same file: equal after resolving their
/// directories (the sockets themselves need not exist yet).
fn same_socket_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    let resolve = |p: &std::path::Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::canonicalize(&dir)
            .unwrap_or(dir)
            .join(p.file_name().unwrap_or_default())
    };
    a == b || resolve(a) == resolve(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_qemu_storage_daemon_options() {
        let c = parse_args(&args(
            "--blockdev driver=file,node-name=file0,filename=a,,b.img,cache.direct=on,aio=io_uring \
             --blockdev driver=raw,node-name=disk0,file=file0 \
             --export type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=/tmp/s,writable=on,num-queues=2",
        ))
        .unwrap();
        assert_eq!(c.blockdevs[0].node_name.as_deref(), Some("file0"));
        assert_eq!(
            c.blockdevs[0].driver,
            block_node::Driver::File {
                filename: "a,b.img".into()
            }
        );
        assert!(c.blockdevs[0].cache.direct && !c.blockdevs[0].read_only);
        assert_eq!(
            c.blockdevs[1].driver,
            block_node::Driver::Raw {
                file: block_node::Child::Name("file0".into())
            }
        );
        assert_eq!(c.exports[0].num_queues, 2);
        assert!(c.exports[0].writable);
        assert_eq!(c.exports[0].iothread, None);
        let c = parse_args(&args(
            "--object iothread,id=io0,poll-max-ns=0 \
             --export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=p,iothread=io0",
        ))
        .unwrap();
        assert_eq!(c.exports[0].iothread.as_deref(), Some("io0"));
        assert_eq!(c.iothreads[0].id, "io0");
        assert_eq!(c.iothreads[0].props.get("poll-max-ns"), Some("0"));
    }

    #[test]
    fn bad_options_are_named() {
        let cases = [
            ("--frobnicate x", "unknown option '--frobnicate'"),
            (
                "--blockdev driver=qcow2,node-name=a,file=b --export type=vhost-user-blk",
                "--blockdev: Parameter 'driver' does not accept value 'qcow2'",
            ),
            (
                "--blockdev driver=file,node-name=a,filename=x,colour=red",
                "Parameter 'colour' is unexpected",
            ),
            (
                "--blockdev driver=file,node-name=a,filename=x,aio=native",
                "aio=native",
            ),
            (
                "--blockdev driver=file,node-name=a,filename=x,cache.direct=maybe",
                "expects 'on' or 'off'",
            ),
            (
                "--blockdev driver=file,node-name=a",
                "Parameter 'filename' is missing",
            ),
            ("--export type=nbd,id=e", "type 'nbd'"),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=inet,addr.path=p",
                "Only socket address types 'unix' and 'fd' are supported",
            ),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=p,num-queues=x",
                "expects a number",
            ),
            ("--blockdev", "needs an argument"),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=",
                "addr.path must not be empty",
            ),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=p,serial=123456789012345678901",
                "at most 20",
            ),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=p \
                 --export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=q",
                "Block export id 'e' is already in use",
            ),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=/tmp/p \
                 --export type=vhost-user-blk,id=f,node-name=n,addr.type=unix,addr.path=/tmp/../tmp/p",
                "is already the socket of export 'e'",
            ),
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=fd,addr.str=7 \
                 --export type=vhost-user-scsi,id=f,node-name=n,addr.type=fd,addr.str=7",
                "--export f: its addr.str fd is another export's",
            ),
            (
                "--export type=vhost-user-scsi,id=e,node-name=n,addr.type=unix,addr.path=p,serial=1234567890123456789012345678901234567",
                "scsi-hd's serial holds at most 36",
            ),
            (
                "--monitor chardev=nope",
                "--monitor: chardev 'nope' not found",
            ),
            (
                "--chardev socket,id=m,path=p,server=off",
                "only server=on is supported",
            ),
            (
                "--blockdev driver",
                "Parameter 'driver' does not accept value 'driver'",
            ),
            (
                r#"--blockdev {"driver":"file","#,
                "--blockdev: JSON parse error",
            ),
            ("", "nothing to do"),
        ];
        for (line, want) in cases {
            let err = parse_args(&args(line)).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
        for (line, want) in [
            (
                "--export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=p,iothread=nope",
                "--export id=e: iothread \"nope\" not found",
            ),
            ("--object iothread", "parameter 'id' is missing"),
            (
                "--object memory-backend-ram,id=m",
                "type 'memory-backend-ram'",
            ),
            (
                "--object iothread,id=t,colour=red",
                "invalid parameter 'colour'",
            ),
            (
                "--object iothread,id=t --object iothread,id=t",
                "--object iothread,id=t: duplicate id",
            ),
        ] {
            let err = parse_args(&args(line)).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
        // Nodes are the registry's: a duplicate or a missing one is refused at start.
        let c = parse_args(&args(
            "--blockdev driver=file,node-name=a,filename=/nonexistent/x \
             --export type=vhost-user-blk,id=e,node-name=a,addr.type=unix,addr.path=/tmp/x",
        ))
        .unwrap();
        let err = crate::run(&c).unwrap_err().to_string();
        assert_eq!(
            err,
            "--blockdev: Could not open '/nonexistent/x': No such file or directory"
        );
    }
}
