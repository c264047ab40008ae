//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

pub(crate) mod mock_virtio;
pub(crate) mod qmp;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Creates `dir/name`, a sparse 1 MiB image of zeros; its path.
pub(crate) fn blank_image(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    path.display().to_string()
}

/// Runs `cmd` (the VMM with a command line it must refuse) and checks that it exits
/// with status 1 after printing `vmm-bin: WANT` on stderr; `what` names the case.
pub(crate) fn assert_refused(mut cmd: Command, want: &str, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(
        stderr.contains(&format!("vmm-bin: {want}\n")),
        "{what}: {stderr}"
    );
}

/// Assembles `tests/bootsector/NAME.S` (GNU as, 16-bit) into a 512-byte boot sector
/// linked at 0x7c00, working in `dir`. `None` after `skip` says why, without binutils.
pub(crate) fn assemble_boot_sector(dir: &Path, name: &str, skip: impl Fn(&str)) -> Option<Vec<u8>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/bootsector/{name}.S"));
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    match Command::new("as")
        .arg("--32")
        .arg("-I")
        .arg(src.parent().unwrap())
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("as failed on {}: {s}", src.display()),
        Err(e) => {
            skip(&format!("cannot run `as` (binutils): {e}"));
            return None;
        }
    }
    let ld = Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&bin)
        .arg(&obj)
        .status()
        .expect("run ld");
    assert!(ld.success(), "ld failed");
    let sector = std::fs::read(&bin).unwrap();
    assert_eq!(
        sector.len(),
        512,
        "the boot sector must be exactly 512 bytes"
    );
    assert_eq!(&sector[510..], &[0x55, 0xaa]);
    Some(sector)
}

/// Assembles `tests/pvh/NAME.S` (GNU as, 32-bit code in an x86-64 ELF, with
/// `tests/pvh/lib.S`'s PVH note) and links it at 1 MiB with `tests/pvh/pvh.ld`, in
/// `dir`. `None` after `skip` says why, without binutils.
pub(crate) fn assemble_pvh(dir: &Path, name: &str, skip: impl Fn(&str)) -> Option<PathBuf> {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pvh");
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    match Command::new("as")
        .arg("--64")
        .arg("-I")
        .arg(&src_dir)
        .arg("-o")
        .arg(&obj)
        .arg(src_dir.join(format!("{name}.S")))
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("as failed on tests/pvh/{name}.S: {s}"),
        Err(e) => {
            skip(&format!("cannot run `as` (binutils): {e}"));
            return None;
        }
    }
    let ld = Command::new("ld")
        .args(["-m", "elf_x86_64", "-z", "noexecstack", "--build-id=none"])
        .arg("-T")
        .arg(src_dir.join("pvh.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj)
        .status()
        .expect("run ld");
    assert!(ld.success(), "ld failed on {name}");
    Some(elf)
}

/// Starts the PVH program `elf` (from [`assemble_pvh`]) with 128 MiB, isa-debug-exit
/// at 0xf4 (how the programs end) and `extra` options.
pub(crate) fn start_pvh(elf: &Path, extra: &[&str]) -> Vm {
    let mut args = vec!["-nographic", "-m", "128", "-kernel", elf.to_str().unwrap()];
    args.extend_from_slice(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    args.extend_from_slice(extra);
    Vm::start(&args)
}

/// Guest RAM for device-level tests: one memfd block of `bytes` at guest address 0.
pub(crate) fn guest_ram(bytes: u64) -> ram_block::RamList {
    let ram = ram_block::RamList::new();
    let block = ram_block::RamBlock::new(
        "ram",
        vm_memory::GuestAddress(0),
        bytes,
        ram_block::Backing::Memfd { huge_pages: false },
    )
    .unwrap();
    ram.add(block).unwrap();
    ram
}

/// A BAR handler as a vCPU reaches it: through an MMIO bus's dispatch (mapped at
/// `base`), so every access runs inside the dispatch's RCU read section.
pub(crate) fn dispatched(
    bar: std::sync::Arc<dyn io_bus::BusDevice>,
    base: u64,
) -> std::sync::Arc<dyn io_bus::BusDevice> {
    struct Dispatched(io_bus::IoBus, u64);
    impl io_bus::BusDevice for Dispatched {
        fn read(&self, offset: u64, data: &mut [u8]) {
            self.0.read(self.1 + offset, data);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.write(self.1 + offset, data);
        }
    }
    let bus = io_bus::IoBus::new("mmio");
    bus.insert(base, 0x4000, 1, bar).unwrap();
    std::sync::Arc::new(Dispatched(bus, base))
}

/// Whether the host CPU advertises `flag` in /proc/cpuinfo.
pub(crate) fn cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == flag))
    })
}

/// Whether the host CPU has hardware virtualization (vmx/svm): then KVM is not the
/// software PVM of the development machine.
pub(crate) fn hardware_virtualization() -> bool {
    cpu_flag("vmx") || cpu_flag("svm")
}

/// Whether `/dev/kvm` opens; says `SKIPPED test` when not.
pub(crate) fn kvm_or_skip(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("SKIPPED {test}: /dev/kvm is not available");
    }
    ok
}

/// Whether `path` exists; says `SKIPPED test` (with `hint`) when not.
pub(crate) fn file_or_skip(test: &str, path: &Path, hint: &str) -> bool {
    let ok = path.exists();
    if !ok {
        eprintln!("SKIPPED {test}: {} is missing ({hint})", path.display());
    }
    ok
}

/// Whether a SeaBIOS guest can run here (/dev/kvm and Debian's SeaBIOS); prints a
/// SKIPPED line for `test` when not.
pub(crate) fn seabios_vm_or_skip(test: &str) -> bool {
    kvm_or_skip(test)
        && file_or_skip(
            test,
            Path::new("/usr/share/seabios/bios-256k.bin"),
            "apt-get install seabios",
        )
}

/// Boots SeaBIOS with no disk under `-no-reboot -boot reboot-timeout=0` (and `extra`):
/// it reports "No bootable device", reboots at once, and the reboot ends the VMM with
/// status 0. Returns the ended VM (its serial output and stderr), or `None` after a
/// `SKIPPED` line without KVM or SeaBIOS.
pub(crate) fn seabios_until_reset(test: &str, extra: &[&str]) -> Option<Vm> {
    if !seabios_vm_or_skip(test) {
        return None;
    }
    let mut args = vec![
        "-nographic",
        "-m",
        "128",
        "-no-reboot",
        "-boot",
        "reboot-timeout=0",
    ];
    args.extend_from_slice(extra);
    let mut vm = Vm::start(&args);
    let status = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", vm.seen);
    assert!(vm.seen.contains("No bootable device"), "{}", vm.seen);
    Some(vm)
}

/// A running VMM whose stdout (COM1) is collected by a thread.
pub(crate) struct Vm {
    /// The VMM process.
    pub(crate) child: Child,
    output: mpsc::Receiver<Vec<u8>>,
    /// Serial output so far.
    pub(crate) seen: String,
    /// Everything the VMM wrote on stderr (also echoed to the test's stderr).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The read end of stdout, held open and unread ([`Vm::start_with_stalled_stdout`]).
    _held_stdout: Option<std::process::ChildStdout>,
}

impl Vm {
    /// Spawns `vmm-bin ARGS`.
    pub(crate) fn start(args: &[&str]) -> Vm {
        Vm::start_with_env(args, &[])
    }

    /// Spawns `vmm-bin ARGS` with extra environment variables.
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Vm {
        Vm::spawn(args, env, true)
    }

    /// Spawns `vmm-bin ARGS` (with `env`) whose stdout is a pipe that the test holds
    /// open and never reads: the guest's serial output fills it and then stalls.
    pub(crate) fn start_with_stalled_stdout(args: &[&str], env: &[(&str, &str)]) -> Vm {
        Vm::spawn(args, env, false)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], read_stdout: bool) -> Vm {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm-bin");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, output) = mpsc::channel();
        let held_stdout = if read_stdout {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            None
        } else {
            Some(stdout)
        };
        let mut err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                eprint!("{text}");
                sink.lock().unwrap().push_str(&text);
            }
        });
        Vm {
            child,
            output,
            seen: String::new(),
            stderr,
            _held_stdout: held_stdout,
        }
    }

    /// What the VMM wrote on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` (its reader may lag behind the process's
    /// exit); false at the deadline.
    pub(crate) fn wait_stderr(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits until the serial output contains `text`; false at the deadline.
    pub(crate) fn wait_for(&mut self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => return false,
            }
        }
        true
    }

    /// Collects the rest of the serial output: until the reader sees end of file (the
    /// VMM exited and its stdout closed), at most a few seconds.
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => return, // disconnected (EOF) or out of time
            }
        }
    }

    /// Waits for the process to exit; kills it at the deadline (`None`). The serial
    /// output is complete in both cases.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_or_kill(&mut self.child, timeout);
        self.drain();
        status
    }
}

/// Waits for `child` to exit; kills it (and reaps it) at the deadline: `None`.
pub(crate) fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) mod vhost_frontend;

/// The image `tests/bootsector/disktest.S` checks: the boot sector, then sectors
/// 1..=2048 with dword i of sector N = N << 16 | i, then zeros up to and including LBA
/// 4096 (which the program writes).
pub(crate) fn disk_image(boot: &[u8]) -> Vec<u8> {
    let mut disk = boot.to_vec();
    for n in 1u32..=2048 {
        for i in 0u32..128 {
            disk.extend_from_slice(&(n << 16 | i).to_le_bytes());
        }
    }
    disk.resize(4097 * 512, 0);
    disk
}

/// Whether LBA 4096 of `image` holds what disktest.S writes there: a copy of sector
/// 1985 (the first sector of the last 64-sector batch it read).
pub(crate) fn disktest_sector_written(image: &[u8]) -> Result<(), String> {
    let lba = 4096 * 512;
    if image.len() < lba + 512 {
        return Err("the image did not grow to the written sector".into());
    }
    for i in 0..128usize {
        let dword = u32::from_le_bytes(image[lba + 4 * i..lba + 4 * i + 4].try_into().unwrap());
        if dword != (1985 << 16) | i as u32 {
            return Err(format!("dword {i} of the written sector is {dword:#x}"));
        }
    }
    Ok(())
}

/// Connects to the unix socket at `path`, waiting up to `deadline` for it to appear;
/// reads then time out after `deadline`.
pub(crate) fn connect_unix(path: &Path, deadline: Duration) -> std::os::unix::net::UnixStream {
    let start = Instant::now();
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    start.elapsed() < deadline,
                    "no socket at {}: {e}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream.set_read_timeout(Some(deadline)).unwrap();
    stream
}
