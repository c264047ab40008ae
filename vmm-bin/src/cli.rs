//! The QEMU-compatible command line: `vmm-bin -m 512 -smp 2 -kernel bzImage ...`.
//!
//! [`parse`] turns the arguments (without the program name) into a [`Config`]; it never
//! panics and never exits: every problem is an [`Error`] whose message names the option
//! and what was wrong with it. Options take one argument in the next word, as in QEMU,
//! and may be spelled with one or two dashes. Option arguments in QEMU's `key=value,...`
//! form are parsed by the `qemu-opts` crate (`,,` is a literal comma).
//!
//! Options that the machine cannot honour yet (a disk model that is still being written)
//! are parsed into the config all the same; the machine reports them "not yet supported".
//! Nothing is accepted and ignored: where QEMU refuses an input, the message is QEMU's
//! (`-initrd only allowed with -kernel option`, `Invalid CPU topology: ...`).

use std::path::PathBuf;

use qemu_opts::{Grammar, Opts, SizeUnit};

use kvm_machine::MachineConfig;
use pc_devices::monitor::{MonitorError, QmpOption};
use qemu_log::LogConfig;

mod drive;
mod smp;

/// `-boot`'s options: QEMU's grammar and checks live in qemu-opts.
pub use qemu_opts::BootOptions;

/// What was wrong with the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An option we do not know.
    #[error("unknown option '{0}' (see vmm-bin -help)")]
    UnknownOption(String),
    /// An option given as the last word, without its argument.
    #[error("option '{0}' requires an argument")]
    MissingArgument(String),
    /// A word that is not an option (QEMU's positional disk image is not supported).
    #[error("unexpected argument '{0}': options start with '-'")]
    Positional(String),
    /// Options that do not go together (QEMU's message, as is).
    #[error("{0}")]
    Conflict(String),
    /// A malformed option argument.
    #[error("invalid argument for '{option}': {reason}")]
    Invalid {
        /// The option, with its dash.
        option: String,
        /// What was wrong.
        reason: String,
    },
}

/// A malformed `key=value,...` argument: [`Error::Invalid`], the reason without the
/// option (the message reads `invalid argument for '-drive': empty key in '=x'`).
impl From<qemu_opts::Error> for Error {
    fn from(e: qemu_opts::Error) -> Error {
        invalid(e.option(), e.reason())
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// `-device isa-debug-exit,iobase=..,iosize=..`: the machine's own ports.
pub use kvm_machine::DebugExitPorts as DebugExit;

/// One `-drive` option: the block-node crate owns its grammar.
pub use block_node::DriveOptions as DriveConfig;

/// One `-device` option other than `isa-debug-exit` (which the machine builds in): the
/// pc-devices crate owns it.
pub use pc_devices::DeviceOption as DeviceConfig;

/// One `-object` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectConfig {
    /// The QOM type (`iothread`).
    pub qom_type: String,
    /// `id=`.
    pub id: String,
    /// The other properties.
    pub props: Opts,
}

/// The VM the command line describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// What kvm-machine builds: `-m`, `-smp`, `-kernel`, `-initrd`, `-append`, `-bios`,
    /// `-nographic`, `-serial` (COM1 on stdio or nowhere), `-no-reboot`,
    /// `-device isa-debug-exit`, `-boot reboot-timeout=`, `-cpu host,...`. Its
    /// `stop_on_internal_error` follows `-qmp` ([`crate::machine::machine_config`]).
    pub machine: MachineConfig,
    /// `-S`: start with the vCPUs stopped (prelaunch) until the monitor says `cont`.
    pub start_paused: bool,
    /// `-qmp ...`, for the monitor (parsed by the monitor's own [`QmpOption`] parser).
    pub qmp: Vec<QmpOption>,
    /// `-drive ...`.
    pub drives: Vec<DriveConfig>,
    /// `-blockdev ...` (dotted or JSON), in order.
    pub blockdevs: Vec<block_node::BlockdevOptions>,
    /// `-device ...` (other than `isa-debug-exit`).
    pub devices: Vec<DeviceConfig>,
    /// `-object ...`.
    pub objects: Vec<ObjectConfig>,
    /// `-boot`: order, once, menu, splash-time, strict, reboot-timeout.
    pub boot: BootOptions,
    /// `-d ITEMS` and `-D FILE`: what is logged, and where.
    pub log: LogConfig,
    /// Warnings found while parsing (an ignored `-cpu` property): the caller logs them
    /// once the log (configured by this same command line) is set up.
    pub warnings: Vec<String>,
}

/// The default firmware: Debian's SeaBIOS (package `seabios`), the machine's.
pub use kvm_machine::DEFAULT_BIOS;

/// `-cpu host[,FEATURE=on|off|+FEATURE|-FEATURE...]`: the feature toggles, checked
/// against the names we know.
fn parse_cpu_features(
    option: &str,
    arg: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, bool)>> {
    let mut features = Vec::new();
    for item in qemu_opts::split_commas(arg).into_iter().skip(1) {
        let (name, value) = if let Some(n) = item.strip_prefix('+') {
            (n, Some("on"))
        } else if let Some(n) = item.strip_prefix('-') {
            (n, Some("off"))
        } else if let Some((n, v)) = item.split_once('=') {
            (n, Some(v))
        } else {
            (item.as_str(), None)
        };
        if kvm_machine::cpuid::is_ignored_property(name) {
            warnings.push(format!("{option} property '{name}' ignored"));
            continue;
        }
        if kvm_machine::cpuid::feature(name).is_none() {
            return Err(invalid(option, format!("unknown CPU feature '{name}'")));
        }
        let on = match value.unwrap_or("on") {
            "on" | "true" | "yes" => true,
            "off" | "false" | "no" => false,
            v => return Err(invalid(option, format!("{name}={v}: expected on or off"))),
        };
        features.push((name.to_string(), on));
    }
    Ok(features)
}

/// The most vCPUs `-smp` accepts (KVM's usual `KVM_MAX_VCPUS` is larger, SeaBIOS's
/// tables stop at 255).
pub const MAX_CPUS: u32 = 255;

/// Parses `arg`, the argument of `option`, in QEMU's `QemuOpts` grammar; a first item
/// without `=` is `implied`'s value.
fn opts(option: &str, arg: &str, implied: Option<&'static str>) -> Result<Opts> {
    let grammar = match implied {
        Some(key) => Grammar::opts().implied(key),
        None => Grammar::opts(),
    };
    Ok(Opts::parse(option, arg, grammar)?)
}

fn invalid(option: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        option: option.to_owned(),
        reason: reason.into(),
    }
}

/// The options that take an argument, and those that do not.
const WITH_ARG: &[&str] = &[
    "m", "smp", "kernel", "initrd", "append", "bios", "serial", "display", "device", "drive",
    "object", "qmp", "boot", "machine", "M", "cpu", "accel", "name", "vga", "monitor", "blockdev",
    "hda", "hdb", "hdc", "hdd", "cdrom", "d", "D",
];
const FLAGS: &[&str] = &["nographic", "no-reboot", "enable-kvm", "S", "nodefaults"];

/// Parses the arguments after the program name.
///
/// # Errors
///
/// See [`Error`]; the first problem found is returned.
pub fn parse<I, S>(args: I) -> Result<Config>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut config = Config::default();
    let mut serial_given = false;
    let mut args = args.into_iter().map(Into::into);
    while let Some(word) = args.next() {
        let Some(name) = word
            .strip_prefix("--")
            .or_else(|| word.strip_prefix('-'))
            .filter(|n| !n.is_empty())
        else {
            return Err(Error::Positional(word));
        };
        // QEMU also accepts `-opt=value`? It does not; keep the name whole.
        let name = name.to_owned();
        if FLAGS.contains(&name.as_str()) {
            match name.as_str() {
                "nographic" => config.machine.nographic = true,
                "no-reboot" => config.machine.no_reboot = true,
                "S" => config.start_paused = true,
                _ => {} // -enable-kvm, -nodefaults: what we do anyway
            }
            continue;
        }
        if !WITH_ARG.contains(&name.as_str()) {
            return Err(Error::UnknownOption(word));
        }
        let Some(arg) = args.next() else {
            return Err(Error::MissingArgument(word));
        };
        apply(&mut config, &word, &name, &arg, &mut serial_given)?;
    }
    if config.machine.nographic && !serial_given {
        config.machine.serial_stdio = true;
    }
    if config.machine.kernel.is_none() {
        // QEMU's checks, in its order.
        if config.machine.append.is_some() {
            return Err(Error::Conflict(
                "-append only allowed with -kernel option".into(),
            ));
        }
        if config.machine.initrd.is_some() {
            return Err(Error::Conflict(
                "-initrd only allowed with -kernel option".into(),
            ));
        }
    }
    Ok(config)
}

fn apply(
    config: &mut Config,
    option: &str,
    name: &str,
    arg: &str,
    serial_given: &mut bool,
) -> Result<()> {
    match name {
        "m" => {
            let kv = opts(option, arg, Some("size"))?;
            if let Some(bad) = kv.unknown_keys(&["size"]).first() {
                return Err(invalid(option, format!("unsupported key '{bad}'")));
            }
            let size = kv.get("size").unwrap_or_default();
            let bytes = qemu_opts::parse_size(size, SizeUnit::MiB)
                .ok_or_else(|| invalid(option, format!("'{size}' is not a size")))?;
            if bytes < (1 << 20) {
                return Err(invalid(option, "guest RAM must be at least 1 MiB"));
            }
            if bytes > (1 << 40) {
                return Err(invalid(option, "guest RAM is limited to 1 TiB"));
            }
            config.machine.ram_bytes = bytes;
        }
        "smp" => config.machine.cpus = smp::parse(option, arg)?,
        "kernel" => config.machine.kernel = Some(PathBuf::from(arg)),
        "initrd" => config.machine.initrd = Some(PathBuf::from(arg)),
        "append" => config.machine.append = Some(arg.to_owned()),
        "bios" => config.machine.bios = PathBuf::from(arg),
        "serial" => {
            *serial_given = true;
            config.machine.serial_stdio = match arg {
                "stdio" | "mon:stdio" => true,
                "none" | "null" => false,
                _ => return Err(invalid(option, format!("'{arg}': only stdio and none"))),
            };
        }
        "display" => {
            if Opts::parse(option, arg, Grammar::opts().implied("type"))
                .ok()
                .and_then(|kv| kv.get("type").map(str::to_owned))
                .as_deref()
                != Some("none")
            {
                return Err(invalid(option, "only '-display none' (no display exists)"));
            }
        }
        "vga" if arg == "none" => {}
        "vga" => return Err(invalid(option, "only '-vga none' (no display exists)")),
        "monitor" if arg == "none" => {}
        "monitor" => return Err(invalid(option, "use -qmp; only '-monitor none'")),
        "machine" | "M" => {
            let kv = opts(option, arg, Some("type"))?;
            for (k, v) in kv.iter() {
                let ok = match k {
                    "type" => v == "pc" || v.starts_with("pc-i440fx"),
                    "accel" => v == "kvm",
                    _ => false,
                };
                if !ok {
                    return Err(invalid(
                        option,
                        format!("unsupported {k}={v} (pc, accel=kvm)"),
                    ));
                }
            }
        }
        "accel" if arg == "kvm" || arg.starts_with("kvm,") => {}
        "accel" => return Err(invalid(option, "only KVM acceleration")),
        "cpu" if arg == "host" || arg.starts_with("host,") => {
            config.machine.cpu_features = parse_cpu_features(option, arg, &mut config.warnings)?;
        }
        "cpu" => return Err(invalid(option, "only '-cpu host' (the host's KVM CPUID)")),
        "name" => {}
        "d" => config
            .log
            .add_items(arg)
            .map_err(|e| invalid(option, e.to_string()))?,
        "D" => config.log.file = Some(PathBuf::from(arg)),
        "boot" => {
            config.boot.apply(option, arg)?;
            config.machine.reboot_timeout_ms = config.boot.reboot_timeout_ms;
        }
        "qmp" => config.qmp.push(arg.parse().map_err(|e| match e {
            MonitorError::Option(reason) => invalid(option, reason),
            other => invalid(option, other.to_string()),
        })?),
        "drive" => {
            let drive = drive::parse(option, arg, &config.drives)?;
            config.drives.push(drive);
        }
        "hda" | "hdb" | "hdc" | "hdd" | "cdrom" => {
            let drive = drive::parse(option, &drive::legacy(name, arg), &config.drives)?;
            config.drives.push(drive);
        }
        "blockdev" => config.blockdevs.push(
            block_node::BlockdevOptions::parse(option, arg).map_err(|e| match e {
                block_node::Error::Syntax(e) => Error::from(e),
                e => invalid(option, e.to_string()),
            })?,
        ),
        "object" => config.objects.push(parse_object(option, arg)?),
        "device" => {
            let mut props = opts(option, arg, Some("driver"))?;
            let driver = props.get("driver").unwrap_or_default().to_owned();
            if driver.is_empty() {
                return Err(invalid(option, "missing device type"));
            }
            if driver == "isa-debug-exit" {
                config.machine.debug_exit = Some(parse_debug_exit(option, &props)?);
            } else {
                props.remove("driver");
                config.devices.push(DeviceConfig { driver, props });
            }
        }
        _ => return Err(Error::UnknownOption(option.to_owned())),
    }
    Ok(())
}

fn parse_debug_exit(option: &str, props: &Opts) -> Result<DebugExit> {
    if let Some(bad) = props
        .unknown_keys(&["driver", "iobase", "iosize", "id"])
        .first()
    {
        return Err(invalid(
            option,
            format!("isa-debug-exit: unsupported key '{bad}'"),
        ));
    }
    let number = |key: &str, default: u64| -> Result<u16> {
        let value = props
            .get(key)
            .map_or(Some(default), qemu_opts::parse_number);
        value
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| invalid(option, format!("isa-debug-exit: bad {key}")))
    };
    let iobase = number("iobase", 0x501)?;
    let iosize = number("iosize", 2)?;
    if !matches!(iosize, 1 | 2 | 4) || iobase.checked_add(iosize - 1).is_none() {
        return Err(invalid(option, "isa-debug-exit: iosize must be 1, 2 or 4"));
    }
    Ok(DebugExit { iobase, iosize })
}

fn parse_object(option: &str, arg: &str) -> Result<ObjectConfig> {
    let mut kv = opts(option, arg, Some("qom-type"))?;
    let qom_type = kv.get("qom-type").unwrap_or_default().to_owned();
    if qom_type != "iothread" {
        return Err(invalid(
            option,
            format!("'{qom_type}': only iothread objects"),
        ));
    }
    let Some(id) = kv.get("id").filter(|id| !id.is_empty()).map(str::to_owned) else {
        return Err(invalid(option, "an object needs id="));
    };
    kv.remove("qom-type");
    kv.remove("id");
    Ok(ObjectConfig {
        qom_type,
        id,
        props: kv,
    })
}

/// The usage text for `-help`.
pub const USAGE: &str = "\
usage: vmm-bin [options]
  -m SIZE            guest RAM (512, 512M, 2G; default 128M)
  -smp N[,cores=N]   vCPUs (one socket of single-threaded cores; QEMU's topology checks)
  -bios PATH         firmware (default /usr/share/seabios/bios-256k.bin)
  -kernel PATH       direct Linux boot (bzImage or ELF vmlinux)
  -initrd PATH       initial ramdisk for -kernel
  -append CMDLINE    kernel command line for -kernel
  -nographic         no display; COM1 on stdio
  -serial stdio|none COM1 backend
  -display none      accepted (there is no display)
  -no-reboot         exit instead of rebooting
  -S                 start paused (for the monitor's cont)
  -boot [order=DRIVES][,once=DRIVES][,menu=on|off][,splash-time=MS][,strict=on|off]
        [,reboot-timeout=MS]
  -device isa-debug-exit,iobase=0xf4,iosize=0x04
  -blockdev driver=file|raw,node-name=..,...   (or libvirt's JSON form {\"driver\":..})
  -device virtio-blk-pci,drive=ID|NODE[,id=..][,iothread=..][,bootindex=N][,addr=SLOT]
        [,num-queues=N][,queue-size=N][,serial=..]
  -device virtio-scsi-pci,id=ID[,iothread=..][,num_queues=N][,virtqueue_size=N][,addr=SLOT]
  -device scsi-hd,drive=ID|NODE,bus=ID.0[,id=..][,scsi-id=N][,lun=N][,bootindex=N][,serial=..]
  -device ide-hd|ide-cd[,drive=ID|NODE][,bus=ide.0|ide.1][,unit=0|1][,id=..][,bootindex=N]
        [,serial=..]   (ide-cd without drive: an empty CD drive; not hotpluggable)
  -device help       list the device models
  -drive file=PATH,format=raw,if=ide|virtio|none,id=..,werror=..,rerror=..,cache=..,aio=..
        [,readonly=on][,media=disk|cdrom][,index=N|bus=N,unit=N][,discard=ignore|unmap]
        (if=ide is the default: the PIIX3 IDE at 00:01.1; if=scsi is refused on pc)
  -hda|-hdb|-hdc|-hdd FILE   IDE disk at index 0..3;  -cdrom FILE   IDE CD-ROM at index 2
  -object iothread,id=ID[,poll-max-ns=NS][,poll-grow=N][,poll-shrink=N]
  -qmp unix:PATH,server=on,wait=off
  -d ITEM[,...]      log more: debug, TARGET=LEVEL, trace:PATTERN (-d help; also $VMM_LOG)
  -D FILE            write the log to FILE instead of stderr
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Config {
        parse(args.iter().copied()).unwrap()
    }

    #[test]
    fn ram_sizes_default_to_mib() {
        let ram = |arg: &str| parse(["-m", arg]).map(|c| c.machine.ram_bytes);
        assert_eq!(ram("512"), Ok(512 << 20));
        assert_eq!(ram("size=1.5G"), Ok(3 << 29));
        assert_eq!(
            ram("lots").unwrap_err().to_string(),
            "invalid argument for '-m': 'lots' is not a size"
        );
        assert_eq!(
            ram("1G,slots=2").unwrap_err().to_string(),
            "invalid argument for '-m': unsupported key 'slots'"
        );
    }

    #[test]
    fn a_typical_command_line() {
        let c = parse_ok(&[
            "-m",
            "2G",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-kernel",
            "/k",
            "-append",
            "console=ttyS0 a=b,c",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-qmp",
            "unix:/tmp/q.sock,server=on,wait=off",
            "-display",
            "none",
        ]);
        assert_eq!(c.machine.ram_bytes, 2 << 30);
        assert_eq!(c.machine.cpus, 2);
        assert!(c.machine.nographic && c.machine.no_reboot);
        assert!(c.machine.serial_stdio);
        assert_eq!(c.machine.append.as_deref(), Some("console=ttyS0 a=b,c"));
        assert_eq!(
            c.machine.debug_exit,
            Some(DebugExit {
                iobase: 0xf4,
                iosize: 4
            })
        );
        assert_eq!(c.qmp[0].path, PathBuf::from("/tmp/q.sock"));
        assert!(!c.qmp[0].wait);
        assert_eq!(
            parse(["-qmp", "unix:/x,server=off"])
                .unwrap_err()
                .to_string(),
            "invalid argument for '-qmp': server=off is not supported in \
             'unix:/x,server=off': the monitor listens on a socket"
        );
        assert_eq!(c.machine.bios, PathBuf::from(DEFAULT_BIOS));
    }

    #[test]
    fn disks_and_iothreads_are_structured() {
        let c = parse_ok(&[
            "--drive",
            "file=/d,,x.img,format=raw,if=none,id=d0,werror=stop,cache=none,aio=io_uring",
            "-object",
            "iothread,id=io0",
            "-device",
            "virtio-blk-pci,drive=d0,iothread=io0,id=vblk0",
        ]);
        let d = &c.drives[0];
        assert_eq!(d.file, Some(PathBuf::from("/d,x.img")));
        assert_eq!(d.interface, "none");
        assert_eq!(d.id.as_deref(), Some("d0"));
        assert_eq!(d.werror.as_deref(), Some("stop"));
        assert_eq!(c.objects[0].id, "io0");
        assert_eq!(c.devices[0].driver, "virtio-blk-pci");
        assert_eq!(c.devices[0].props.get("drive"), Some("d0"));
        assert_eq!(c.devices[0].id(), Some("vblk0"));
    }

    /// `-hda`..`-hdd` and `-cdrom` are the `-drive`s QEMU makes of them: the default
    /// interface (IDE) at index 0..3, `-cdrom` at index 2 and read-only; a comma stays
    /// in the file name; a taken index is refused.
    #[test]
    fn legacy_disk_options_are_ide_drives() {
        let c = parse_ok(&["-hda", "/a,b.img", "-cdrom", "/c.iso", "-hdb", "/b.img"]);
        let place = |i: usize| (c.drives[i].bus, c.drives[i].unit);
        assert_eq!(c.drives[0].file, Some(PathBuf::from("/a,b.img")));
        assert_eq!(c.drives[0].interface, "ide");
        assert_eq!(place(0), (0, 0));
        assert!(!c.drives[0].cdrom && !c.drives[0].readonly);
        assert_eq!(place(1), (1, 0));
        assert!(c.drives[1].cdrom && c.drives[1].readonly);
        assert_eq!(place(2), (0, 1));
        let taken = parse(["-cdrom", "/c.iso", "-hdc", "/d.img"]);
        assert!(taken.is_err(), "-hdc takes -cdrom's index 2");
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let cases: &[&[&str]] = &[
            &["-frobnicate"],
            &["-m"],
            &["-m", "lots"],
            &["-m", "0"],
            &["-smp", "0"],
            &["-smp", "100000"],
            &["-smp", "x"],
            &["disk.img"],
            &["-"],
            &["--"],
            &["-serial", "tcp:1"],
            &["-device", ""],
            &["-device", "isa-debug-exit,iobase=0x10000"],
            &["-device", "isa-debug-exit,iosize=3"],
            &["-device", "isa-debug-exit,iobase=0xffff,iosize=4"],
            &["-qmp", "tcp:1"],
            &["-qmp", "unix:/x,server=maybe"],
            &["-qmp", "unix:/x,server=off"],
            &["-drive", "file=x,if=floppy"],
            &["-drive", "file=x,format=qcow2"],
            &["-drive", "=x"],
            &["-drive", "file=x,bogus=1"],
            &["-object", "memory-backend-ram,id=m"],
            &["-object", "iothread"],
            &["-display", "gtk"],
            &["-machine", "q35"],
            &["-cpu", "qemu64"],
            &["-cpu", "host,frobnicate=on"],
            &["-cpu", "host,cx16=maybe"],
            &["-cpu", "host,-nosuch"],
            &["-boot", "reboot-timeout=soon"],
        ];
        for args in cases {
            assert!(
                parse(args.iter().copied()).is_err(),
                "{args:?} was accepted"
            );
        }
        assert_eq!(
            parse(["-frobnicate"]).unwrap_err().to_string(),
            "unknown option '-frobnicate' (see vmm-bin -help)"
        );
        assert_eq!(
            parse(["-kernel"]).unwrap_err(),
            Error::MissingArgument("-kernel".into())
        );
    }

    #[test]
    fn serial_defaults_follow_nographic() {
        assert!(!parse_ok(&[]).machine.serial_stdio);
        assert!(parse_ok(&["-serial", "stdio"]).machine.serial_stdio);
        assert!(
            !parse_ok(&["-nographic", "-serial", "none"])
                .machine
                .serial_stdio
        );
    }

    /// The grammar is qemu-opts' (its own tests cover it); a malformed argument reads
    /// `invalid argument for 'OPTION': REASON`, and the implied keys are not properties.
    #[test]
    fn option_strings_go_through_qemu_opts() {
        let err = |args: [&str; 2]| parse(args).unwrap_err().to_string();
        assert_eq!(
            err(["--drive", "file=x,"]),
            "invalid argument for '--drive': empty item"
        );
        assert_eq!(
            err(["-device", "virtio-blk-pci,=x"]),
            "invalid argument for '-device': empty key in '=x'"
        );
        let c = parse_ok(&[
            "-device",
            "virtio-blk-pci,drive=d0,drive=d1,x",
            "-object",
            "iothread,id=io0,poll-max-ns=0",
        ]);
        let props: Vec<_> = c.devices[0].props.iter().collect();
        assert_eq!(props, [("drive", "d0"), ("drive", "d1"), ("x", "on")]);
        assert_eq!(c.devices[0].props.get("drive"), Some("d1"));
        let props: Vec<_> = c.objects[0].props.iter().collect();
        assert_eq!(props, [("poll-max-ns", "0")]);
    }

    #[test]
    fn initrd_and_append_need_a_kernel() {
        assert_eq!(
            parse(["-initrd", "/i"]).unwrap_err().to_string(),
            "-initrd only allowed with -kernel option"
        );
        assert_eq!(
            parse(["-initrd", "/i", "-append", "x"])
                .unwrap_err()
                .to_string(),
            "-append only allowed with -kernel option"
        );
        let c = parse(["-kernel", "/k", "-initrd", "/i", "-append", "x"]).unwrap();
        assert_eq!(c.machine.initrd, Some(PathBuf::from("/i")));
    }

    /// `-boot`'s grammar and QEMU's checks are qemu-opts' (its tests cover them); the
    /// words arrive in vmm-bin's frame and a second `-boot` adds to the first.
    #[test]
    fn boot_options_follow_qemu() {
        let c = parse_ok(&["-boot", "order=dn,once=c,menu=on", "-boot", "strict=on"]);
        assert_eq!(
            c.boot,
            BootOptions {
                order: Some("dn".into()),
                once: Some("c".into()),
                menu: true,
                splash_time: None,
                strict: true,
                reboot_timeout_ms: None,
            }
        );
        assert_eq!(parse_ok(&["-boot", "cd"]).boot.order.as_deref(), Some("cd"));
        assert_eq!(
            parse(["-boot", "order=cc"]).unwrap_err().to_string(),
            "invalid argument for '-boot': Boot device 'c' was given twice"
        );
    }

    /// `-d` items accumulate, `-D` names the file; a QEMU item we do not have is refused.
    #[test]
    fn log_options() {
        let c = parse_ok(&["-d", "debug", "-d", "trace:qmp", "-D", "/tmp/log"]);
        assert_eq!(c.log.directives, ["debug", "qmp=trace"]);
        assert_eq!(c.log.file, Some(PathBuf::from("/tmp/log")));
        assert!(!c.log.help);
        assert!(parse_ok(&["-d", "help"]).log.help);
        assert_eq!(
            parse(["-d", "int"]).unwrap_err().to_string(),
            "invalid argument for '-d': unknown log item 'int' (see -d help)"
        );
    }

    #[test]
    fn reboot_timeout() {
        let c = parse_ok(&["-boot", "reboot-timeout=0"]);
        assert_eq!(c.machine.reboot_timeout_ms, Some(0));
        let c = parse_ok(&["-boot", "reboot-timeout=-1"]);
        assert_eq!(c.machine.reboot_timeout_ms, None);
    }

    #[test]
    fn cpu_features_parse_in_qemus_spellings() {
        let c = parse([
            "-cpu",
            "host,arch-capabilities=off,-cx16,+x2apic,tsc_deadline=on",
        ])
        .unwrap();
        assert_eq!(
            c.machine.cpu_features,
            vec![
                ("arch-capabilities".to_string(), false),
                ("cx16".to_string(), false),
                ("x2apic".to_string(), true),
                ("tsc_deadline".to_string(), true),
            ]
        );
        assert!(
            parse(["-cpu", "host"])
                .unwrap()
                .machine
                .cpu_features
                .is_empty()
        );
        assert!(c.warnings.is_empty());
        // QEMU properties that are not CPUID flags are accepted (and ignored).
        let c = parse([
            "-cpu",
            "host,migratable=on,kvm=off,phys-bits=40,hv_relaxed,sse4_1=off",
        ])
        .unwrap();
        assert_eq!(c.machine.cpu_features, vec![("sse4_1".to_string(), false)]);
        assert_eq!(c.warnings[0], "-cpu property 'migratable' ignored");
        assert_eq!(c.warnings.len(), 4);
    }
}
