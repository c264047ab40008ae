//! A fio-like load generator on our crates, for `benches/block-dma-compare`.
//!
//! Keeps `--iodepth` requests in flight against one file from one [`AioContext`] on the
//! calling thread, each completion resubmitting at a new offset (random and aligned to
//! `--bs`, or the next sequential one), and prints one line of `key=value` pairs:
//! IOPS, bandwidth, p50/p99 latency (submit to completion) and the process's CPU time
//! (user + system, `getrusage(RUSAGE_SELF)`) per I/O.
//!
//! Two modes:
//! - default: [`block_dma::dma_rw`] between guest RAM (a memfd [`RamList`], one `--bs`
//!   slot per in-flight request) and a [`FileBackend`], as a device model would;
//! - `--raw`: [`BlockBackend::submit`] with [`BlockOp::Read`]/[`BlockOp::Write`] on
//!   buffers of our own, without the DMA layer, so its cost shows as the difference.
//!
//! `--registered` sets `FileOptions::registered_buffers`: guest RAM through io_uring
//! registered buffers (`READ_FIXED`/`WRITE_FIXED`). `--poll-max-ns NS` lets the
//! context busy-poll up to NS before it sleeps (an iothread's `poll-max-ns`). The
//! environment's `AIO_URING_SQPOLL=MS` gives its operations ring a kernel submission
//! thread (aio-context's fd monitor docs).
//!
//! ```text
//! cargo run --release -p block-dma --example dma_load -- \
//!     --file target/bench.img --rw randread --bs 4096 --iodepth 32 --runtime 5 --direct
//! ```

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aio_context::{AioContext, PollParams};
use block_dma::{
    AlignedBuf, BlockBackend, BlockOp, DmaDirection, DmaMemory, Errno, FileBackend, FileOptions,
    IoBuffers, SgList, dma_rw,
};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::GuestAddress;

const USAGE: &str = "usage: dma_load --file PATH --rw randread|randwrite|read|write \
--bs BYTES --iodepth N --runtime SECS [--size BYTES] [--direct] [--raw] [--registered] \
[--poll-max-ns NS]";

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rw {
    RandRead,
    RandWrite,
    Read,
    Write,
}

impl Rw {
    fn parse(s: &str) -> Result<Rw, String> {
        match s {
            "randread" => Ok(Rw::RandRead),
            "randwrite" => Ok(Rw::RandWrite),
            "read" => Ok(Rw::Read),
            "write" => Ok(Rw::Write),
            _ => Err(format!(
                "--rw: expected randread, randwrite, read or write, got {s:?}"
            )),
        }
    }

    fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite)
    }

    fn direction(self) -> DmaDirection {
        match self {
            Rw::RandRead | Rw::Read => DmaDirection::Read,
            Rw::RandWrite | Rw::Write => DmaDirection::Write,
        }
    }
}

/// The command line.
#[derive(Debug)]
struct Args {
    file: String,
    rw: Rw,
    bs: u64,
    iodepth: usize,
    runtime: Duration,
    size: Option<u64>,
    direct: bool,
    raw: bool,
    /// Guest RAM through io_uring registered buffers (`FileOptions::registered_buffers`).
    registered: bool,
    /// The context's busy-poll window (`PollParams::max_ns`, QEMU's `poll-max-ns`); 0: none.
    poll_max_ns: u64,
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{flag}: expected a non-negative integer, got {v:?}"))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut file, mut rw, mut bs, mut iodepth, mut runtime) = (None, None, None, None, None);
    let (mut size, mut direct, mut raw, mut registered) = (None, false, false, false);
    let mut poll_max_ns = 0;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--file" => file = Some(value()?),
            "--rw" => rw = Some(Rw::parse(&value()?)?),
            "--bs" => bs = Some(parse_u64("--bs", &value()?)?),
            "--iodepth" => iodepth = Some(parse_u64("--iodepth", &value()?)?),
            "--runtime" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .map_err(|_| format!("--runtime: expected seconds, got {v:?}"))?;
                if !(secs > 0.0 && secs < 86_400.0) {
                    return Err(format!("--runtime: expected 0 < SECS < 86400, got {v}"));
                }
                runtime = Some(Duration::from_secs_f64(secs));
            }
            "--size" => size = Some(parse_u64("--size", &value()?)?),
            "--direct" => direct = true,
            "--raw" => raw = true,
            "--registered" => registered = true,
            "--poll-max-ns" => poll_max_ns = parse_u64("--poll-max-ns", &value()?)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let missing = |what: &str| format!("{what} is required\n{USAGE}");
    let bs = bs.ok_or_else(|| missing("--bs"))?;
    if bs == 0 || bs % 512 != 0 || bs > 64 << 20 {
        return Err(format!(
            "--bs: expected a multiple of 512 up to 64 MiB, got {bs}"
        ));
    }
    let iodepth = iodepth.ok_or_else(|| missing("--iodepth"))?;
    if !(1..=1024).contains(&iodepth) {
        return Err(format!("--iodepth: expected 1..=1024, got {iodepth}"));
    }
    Ok(Args {
        file: file.ok_or_else(|| missing("--file"))?,
        rw: rw.ok_or_else(|| missing("--rw"))?,
        bs,
        iodepth: iodepth as usize,
        runtime: runtime.ok_or_else(|| missing("--runtime"))?,
        size,
        direct,
        raw,
        registered,
        poll_max_ns,
    })
}

/// xorshift64*: cheap, and good enough to spread offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Where the next I/O goes, and what the finished ones took.
struct Load {
    rw: Rw,
    bs: u64,
    /// Number of `bs` blocks in the tested range.
    blocks: u64,
    rng: Rng,
    next_block: u64,
    deadline: Instant,
    stopped: bool,
    in_flight: usize,
    ios: u64,
    errors: u64,
    first_error: Option<Errno>,
    /// Nanoseconds from submit to completion, one per I/O.
    lat_ns: Vec<u32>,
}

impl Load {
    fn next_offset(&mut self) -> u64 {
        let block = if self.rw.random() {
            self.rng.next() % self.blocks
        } else {
            let b = self.next_block;
            self.next_block = (b + 1) % self.blocks;
            b
        };
        block * self.bs
    }

    /// Books a completion; returns whether to issue another I/O.
    fn complete(&mut self, started: Instant, res: Result<u64, Errno>) -> bool {
        let now = Instant::now();
        self.in_flight -= 1;
        match res {
            Ok(n) if n == self.bs => {
                self.ios += 1;
                let ns = now.duration_since(started).as_nanos();
                self.lat_ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
            Ok(_) => {
                self.errors += 1;
                self.first_error.get_or_insert(Errno::EIO);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
        if self.errors > 0 || now >= self.deadline {
            self.stopped = true;
        }
        !self.stopped
    }
}

/// Everything an I/O needs to issue its successor.
struct Runner {
    ctx: AioContext,
    backend: Arc<dyn BlockBackend>,
    mem: DmaMemory,
    load: RefCell<Load>,
    /// `--raw`: the host address of each slot's buffer (in `_raw_bufs`).
    raw_ptrs: Vec<*mut u8>,
    /// Owns the raw mode's buffers for the whole run; never touched while it runs.
    _raw_bufs: Vec<AlignedBuf>,
    raw: bool,
}

/// Issues one I/O for `slot` (guest RAM at `slot * bs`, or raw buffer `slot`).
fn issue(runner: &Rc<Runner>, slot: usize) {
    let (offset, bs, rw) = {
        let mut load = runner.load.borrow_mut();
        load.in_flight += 1;
        (load.next_offset(), load.bs, load.rw)
    };
    let started = Instant::now();
    if runner.raw {
        let mut bufs = IoBuffers::new();
        // SAFETY: `raw_ptrs[slot]` is the start of `bs` bytes of an `AlignedBuf` that
        // `runner` owns until the end of the run (after every I/O completed); slot `slot`
        // has one I/O at a time, and nothing reads or writes the buffers through Rust
        // references.
        unsafe { bufs.push_raw(runner.raw_ptrs[slot], bs as usize) };
        let op = match rw.direction() {
            DmaDirection::Read => BlockOp::Read { offset, bufs },
            DmaDirection::Write => BlockOp::Write { offset, bufs },
        };
        let r = runner.clone();
        let done = Box::new(move |res: Result<u64, Errno>, _bufs: Option<IoBuffers>| {
            let again = r.load.borrow_mut().complete(started, res);
            if again {
                issue(&r, slot);
            }
        });
        if let Err(e) = runner.backend.submit(&runner.ctx, op, done) {
            let mut load = runner.load.borrow_mut();
            load.in_flight -= 1;
            load.errors += 1;
            load.first_error.get_or_insert(e);
            load.stopped = true;
        }
    } else {
        let sg: SgList = [(slot as u64 * bs, bs)].into_iter().collect();
        let r = runner.clone();
        let done = Box::new(move |res: Result<u64, Errno>| {
            let again = r.load.borrow_mut().complete(started, res);
            if again {
                issue(&r, slot);
            }
        });
        // The handle is only for cancelling, which the load never does.
        let _ = dma_rw(
            &runner.ctx,
            &runner.mem,
            runner.backend.clone(),
            rw.direction(),
            offset,
            sg,
            done,
        );
    }
}

/// The process's (user, system) CPU time so far.
fn cpu_time() -> (Duration, Duration) {
    // SAFETY: `rusage` is plain old data; zeroes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run(args: Args) -> Result<(), String> {
    let ctx = AioContext::new().map_err(|e| format!("AioContext: {e}"))?;
    if !ctx.supports_io_uring_ops() {
        return Err("io_uring operations are not available on this kernel".into());
    }
    if args.poll_max_ns > 0 {
        ctx.set_poll_params(PollParams {
            max_ns: args.poll_max_ns,
            ..PollParams::IOTHREAD
        });
    }
    let options = FileOptions::new(&args.file)
        .direct(args.direct)
        .registered_buffers(args.registered);
    let file = FileBackend::open(&options).map_err(|e| format!("{}: {e}", args.file))?;
    let info = file.info().clone();
    let size = args.size.unwrap_or(info.size);
    if size > info.size {
        return Err(format!(
            "--size {size} is larger than the file ({} bytes)",
            info.size
        ));
    }
    if size < args.bs {
        return Err(format!(
            "the tested range ({size} bytes) is smaller than --bs {}",
            args.bs
        ));
    }
    if args.direct && args.bs % u64::from(info.request_alignment) != 0 {
        return Err(format!(
            "--bs {} is not a multiple of the file's O_DIRECT alignment {}",
            args.bs, info.request_alignment
        ));
    }
    // Guest RAM: one `bs` slot per in-flight request, plus a page of slack.
    let page = 4096;
    let ram_size = (args.iodepth as u64 * args.bs).div_ceil(page) * page + page;
    let ram = RamList::new();
    let block = RamBlock::new(
        "ram",
        GuestAddress(0),
        ram_size,
        Backing::Memfd { huge_pages: false },
    )
    .map_err(|e| format!("guest RAM: {e}"))?;
    ram.add(block).map_err(|e| format!("guest RAM: {e}"))?;
    let align = (info.memory_alignment as usize).max(page as usize);
    let mut raw_bufs: Vec<AlignedBuf> = if args.raw {
        (0..args.iodepth)
            .map(|_| AlignedBuf::zeroed(args.bs as usize, align))
            .collect()
    } else {
        Vec::new()
    };
    let raw_ptrs = raw_bufs
        .iter_mut()
        .map(|b| {
            let bytes: &mut [u8] = b;
            bytes.as_mut_ptr()
        })
        .collect();
    let expected = (args.runtime.as_secs_f64() * 500_000.0).min(50e6) as usize;
    let runner = Rc::new(Runner {
        ctx: ctx.clone(),
        backend: Arc::new(file),
        mem: DmaMemory::new(ram),
        load: RefCell::new(Load {
            rw: args.rw,
            bs: args.bs,
            blocks: size / args.bs,
            rng: Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id())),
            next_block: 0,
            deadline: Instant::now(), // set below
            stopped: false,
            in_flight: 0,
            ios: 0,
            errors: 0,
            first_error: None,
            lat_ns: Vec::with_capacity(expected),
        }),
        raw_ptrs,
        _raw_bufs: raw_bufs,
        raw: args.raw,
    });

    let cpu0 = cpu_time();
    let t0 = Instant::now();
    runner.load.borrow_mut().deadline = t0 + args.runtime;
    for slot in 0..args.iodepth {
        issue(&runner, slot);
    }
    loop {
        {
            let load = runner.load.borrow();
            if load.stopped && load.in_flight == 0 {
                break;
            }
        }
        ctx.poll(true);
    }
    let wall = t0.elapsed();
    let cpu1 = cpu_time();
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let cpu = user + sys;

    let mut load = runner.load.borrow_mut();
    if let Some(e) = load.first_error {
        return Err(format!("I/O failed: {e:?} ({} errors)", load.errors));
    }
    let ios = load.ios;
    let lat = &mut load.lat_ns;
    lat.sort_unstable();
    let mean_ns = lat.iter().map(|&v| u64::from(v)).sum::<u64>() / (ios.max(1));
    let secs = wall.as_secs_f64();
    println!(
        "mode={} rw={} bs={} iodepth={} direct={} ios={ios} runtime_s={secs:.3} \
         iops={:.1} bw_mib_s={:.1} lat_mean_ns={mean_ns} lat_p50_ns={} lat_p99_ns={} \
         cpu_s={:.4} cpu_user_s={:.4} cpu_sys_s={:.4} cpu_per_io_ns={:.1}",
        if args.raw { "raw" } else { "dma" },
        match args.rw {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
        },
        args.bs,
        args.iodepth,
        u8::from(info.direct),
        ios as f64 / secs,
        (ios * args.bs) as f64 / secs / f64::from(1 << 20),
        percentile(lat, 50.0),
        percentile(lat, 99.0),
        cpu.as_secs_f64(),
        user.as_secs_f64(),
        sys.as_secs_f64(),
        cpu.as_nanos() as f64 / ios.max(1) as f64,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dma_load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dma_load: {e}");
            ExitCode::FAILURE
        }
    }
}
