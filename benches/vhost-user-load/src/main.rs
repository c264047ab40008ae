//! vhost-user-load: a closed-loop block load generator on libblkio (the `blkio` crate).
//!
//! Drives a vhost-user-blk socket (driver `virtio-blk-vhost-user`) or a file/device directly
//! (driver `io_uring`, O_DIRECT) at a fixed queue depth for a fixed time and reports IOPS,
//! bandwidth, p50/p99/p99.9 latency, and CPU time per I/O of this process and, with
//! `--pid`, of the backend process (utime+stime from /proc/PID/stat).
//!
//! ```text
//! vhost-user-load --driver virtio-blk-vhost-user --path SOCK --pid QSD_PID \
//!     --job randread:4k:32 --job randwrite:4k:32 --job read:1m:8 --seconds 10 [--json]
//! vhost-user-load --driver io_uring --path FILE --job randread:4k:32 --seconds 10
//! ```
//! A job is `RW:BS:QD` with RW one of randread, randwrite, read, write.
//!
//! `--driver vu-blk` and `--driver vu-scsi` drive a vhost-user-blk or vhost-user-scsi
//! socket through this program's own frontend (`vu.rs`: libblkio has no
//! vhost-user-scsi driver), so the two exports are compared through the same client.

mod vu;

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

struct Job {
    name: String,
    write: bool,
    random: bool,
    bs: usize,
    qd: usize,
}

fn parse_size(s: &str) -> usize {
    let s = s.to_ascii_lowercase();
    let (n, mul) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1024),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        _ => (&s[..], 1),
    };
    n.parse::<usize>().unwrap_or_else(|_| die(&format!("bad size {s}"))) * mul
}

fn parse_job(s: &str) -> Job {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 {
        die(&format!("bad job {s}: want RW:BS:QD"));
    }
    let (write, random) = match parts[0] {
        "randread" => (false, true),
        "randwrite" => (true, true),
        "read" => (false, false),
        "write" => (true, false),
        other => die(&format!("bad rw {other}")),
    };
    Job {
        name: s.to_string(),
        write,
        random,
        bs: parse_size(parts[1]),
        qd: parts[2].parse().unwrap_or_else(|_| die("bad qd")),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("vhost-user-load: {msg}");
    std::process::exit(2)
}

/// utime+stime of a process in microseconds.
fn cpu_us(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 * 1e6 / hz)
}

/// Thread CPU time of the whole backend process including its threads is in /proc/PID/stat
/// already (it sums the threads).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Outcome {
    ops: u64,
    secs: f64,
    lat_ns: Vec<u32>,
    self_cpu_us: f64,
    backend_cpu_us: Option<f64>,
    errors: u64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// What a job drives: libblkio's queue or our own vhost-user frontend.
trait Queue {
    /// Queues a request of slot `slot` (each slot has one request in flight).
    fn submit(&mut self, slot: usize, off: u64, job: &Job);
    /// Waits for at least one completion; `done(slot, ok)` for each.
    fn reap(&mut self, done: &mut dyn FnMut(usize, bool));
}

/// libblkio, with a buffer of `qd * bs` bytes.
struct BlkioQueue<'a> {
    q: &'a mut blkio::Blkioq,
    buf: *mut u8,
    comps: Vec<MaybeUninit<Completion>>,
}

impl Queue for BlkioQueue<'_> {
    fn submit(&mut self, slot: usize, off: u64, job: &Job) {
        // SAFETY: slot < qd, and the buffer holds qd * bs bytes; each slot has one request in flight.
        let p = unsafe { self.buf.add(slot * job.bs) };
        if job.write {
            self.q.write(off, p, job.bs, slot, ReqFlags::empty());
        } else {
            self.q.read(off, p, job.bs, slot, ReqFlags::empty());
        }
    }

    fn reap(&mut self, done: &mut dyn FnMut(usize, bool)) {
        if self.comps.is_empty() {
            self.comps = (0..1024).map(|_| MaybeUninit::uninit()).collect();
        }
        let n = self
            .q
            .do_io(&mut self.comps, 1, None, None)
            .unwrap_or_else(|e| die(&format!("do_io: {e}")));
        for c in &self.comps[..n] {
            // SAFETY: do_io initialized the first n completions.
            let c = unsafe { c.assume_init_ref() };
            done(c.user_data, c.ret == 0);
        }
    }
}

impl Queue for vu::VuQueue {
    fn submit(&mut self, slot: usize, off: u64, job: &Job) {
        vu::VuQueue::submit(self, slot, off, job.bs, job.write);
    }

    fn reap(&mut self, done: &mut dyn FnMut(usize, bool)) {
        vu::VuQueue::reap(self, done);
    }
}

fn run_job(
    q: &mut dyn Queue,
    capacity: u64,
    span: u64,
    job: &Job,
    secs: f64,
    pid: Option<&str>,
    record: bool,
) -> Outcome {
    let bs = job.bs as u64;
    let blocks = (span.min(capacity) / bs).max(1);
    let mut rng = Rng(0x1234_5678 ^ bs ^ job.qd as u64);
    let mut seq = 0u64;
    let mut next_off = |rng: &mut Rng| -> u64 {
        if job.random {
            (rng.next() % blocks) * bs
        } else {
            let o = (seq % blocks) * bs;
            seq += 1;
            o
        }
    };
    let mut started = vec![Instant::now(); job.qd];
    let mut lat = Vec::with_capacity(if record { 1 << 20 } else { 0 });
    let cpu0 = cpu_us("self").unwrap_or(0.0);
    let b0 = pid.and_then(cpu_us);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    for (slot, start) in started.iter_mut().enumerate() {
        *start = Instant::now();
        q.submit(slot, next_off(&mut rng), job);
    }
    let mut inflight = job.qd;
    let mut ops = 0u64;
    let mut errors = 0u64;
    let mut stopping = false;
    let mut done_slots = Vec::with_capacity(job.qd);
    while inflight > 0 {
        done_slots.clear();
        q.reap(&mut |slot, ok| done_slots.push((slot, ok)));
        let now = Instant::now();
        if now >= deadline {
            stopping = true;
        }
        for &(slot, ok) in &done_slots {
            if !ok {
                errors += 1;
            }
            ops += 1;
            if record {
                lat.push(now.duration_since(started[slot]).as_nanos().min(u32::MAX as u128) as u32);
            }
            if stopping {
                inflight -= 1;
            } else {
                started[slot] = Instant::now();
                q.submit(slot, next_off(&mut rng), job);
            }
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_us("self").unwrap_or(0.0);
    let b1 = pid.and_then(cpu_us);
    Outcome {
        ops,
        secs: el,
        lat_ns: lat,
        self_cpu_us: cpu1 - cpu0,
        backend_cpu_us: match (b0, b1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        errors,
    }
}

/// Bytes per request of `--verify`.
const VERIFY_CHUNK: usize = 64 * 1024;

/// The byte at `offset` of the `--verify` pattern (also computed by the tests on the
/// host): a function of the offset only.
fn verify_byte(offset: u64) -> u8 {
    let x = (offset / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a;
    (x >> ((offset % 8) * 8)) as u8
}

/// `--verify MIB`: writes the pattern over the first MIB MiB, then reads it back and
/// compares; returns the bytes checked (exits 1 on a mismatch or a failed request).
fn verify(q: &mut blkio::Blkioq, buf: *mut u8, capacity: u64, len: u64) -> u64 {
    let len = len.min(capacity) / VERIFY_CHUNK as u64 * VERIFY_CHUNK as u64;
    let mut comps: Vec<MaybeUninit<Completion>> = (0..1).map(|_| MaybeUninit::uninit()).collect();
    let mut wait = |q: &mut blkio::Blkioq, what: &str, off: u64| {
        let n = q
            .do_io(&mut comps, 1, None, None)
            .unwrap_or_else(|e| die(&format!("do_io: {e}")));
        // SAFETY: do_io initialized the first n (here 1) completions.
        let c = unsafe { comps[..n][0].assume_init_ref() };
        if c.ret != 0 {
            die(&format!("verify: {what} at {off} failed: {}", c.ret));
        }
    };
    for off in (0..len).step_by(VERIFY_CHUNK) {
        // SAFETY: the region holds at least VERIFY_CHUNK bytes (see `need`), and no
        // request is in flight while we fill it.
        let chunk = unsafe { std::slice::from_raw_parts_mut(buf, VERIFY_CHUNK) };
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = verify_byte(off + i as u64);
        }
        q.write(off, buf, VERIFY_CHUNK, 0, ReqFlags::FUA);
        wait(q, "write", off);
    }
    q.flush(0, ReqFlags::empty());
    wait(q, "flush", 0);
    for off in (0..len).step_by(VERIFY_CHUNK) {
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(buf, 0, VERIFY_CHUNK) };
        q.read(off, buf, VERIFY_CHUNK, 0, ReqFlags::empty());
        wait(q, "read", off);
        // SAFETY: as above; the read completed.
        let chunk = unsafe { std::slice::from_raw_parts(buf, VERIFY_CHUNK) };
        if let Some(i) = (0..VERIFY_CHUNK).find(|&i| chunk[i] != verify_byte(off + i as u64)) {
            die(&format!("verify: mismatch at byte {}", off + i as u64));
        }
    }
    len
}

/// One run's settings.
struct Run<'a> {
    capacity: u64,
    span: u64,
    secs: f64,
    warmup: f64,
    pid: Option<&'a str>,
    json: bool,
}

impl Run<'_> {
    /// Runs every job on `q` and prints the table (or JSON).
    fn report(&self, q: &mut dyn Queue, jobs: &[Job], driver: &str, path: &str) {
        let (capacity, span, secs, warmup, pid, json) =
            (self.capacity, self.span, self.secs, self.warmup, self.pid, self.json);
        if !json {
            println!(
                "{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
                "job", "IOPS", "MiB/s", "p50 us", "p99 us", "p99.9 us", "backend us/IO", "client us/IO"
            );
        }
        let mut out = Vec::new();
        for job in jobs {
            if warmup > 0.0 {
                run_job(q, capacity, span, job, warmup, None, false);
            }
            let mut o = run_job(q, capacity, span, job, secs, pid, true);
            o.lat_ns.sort_unstable();
            let iops = o.ops as f64 / o.secs;
            let mibs = iops * job.bs as f64 / (1 << 20) as f64;
            let (p50, p99, p999) = (percentile(&o.lat_ns, 0.5), percentile(&o.lat_ns, 0.99), percentile(&o.lat_ns, 0.999));
            let bcpu = o.backend_cpu_us.map(|c| c / o.ops.max(1) as f64);
            let ccpu = o.self_cpu_us / o.ops.max(1) as f64;
            if json {
                out.push(format!(
                    "{{\"job\":\"{}\",\"ops\":{},\"seconds\":{:.3},\"iops\":{:.1},\"mib_s\":{:.2},\"p50_us\":{:.1},\
                     \"p99_us\":{:.1},\"p999_us\":{:.1},\"backend_cpu_us_per_io\":{},\"client_cpu_us_per_io\":{:.3},\"errors\":{}}}",
                    job.name,
                    o.ops,
                    o.secs,
                    iops,
                    mibs,
                    p50,
                    p99,
                    p999,
                    bcpu.map_or("null".to_string(), |c| format!("{c:.3}")),
                    ccpu,
                    o.errors
                ));
            } else {
                println!(
                    "{:<16} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>12.2}{}",
                    job.name,
                    iops,
                    mibs,
                    p50,
                    p99,
                    p999,
                    bcpu.map_or("-".to_string(), |c| format!("{c:.2}")),
                    ccpu,
                    if o.errors > 0 { format!("  ({} errors)", o.errors) } else { String::new() }
                );
            }
            if o.errors > 0 {
                eprintln!("vhost-user-load: {}: {} requests failed", job.name, o.errors);
            }
        }
        if json {
            println!(
                "{{\"driver\":\"{driver}\",\"path\":\"{path}\",\"capacity\":{capacity},\"jobs\":[{}]}}",
                out.join(",")
            );
        }
    }
}

fn main() {
    let mut driver = String::from("virtio-blk-vhost-user");
    let mut path = None;
    let mut pid: Option<String> = None;
    let mut jobs = Vec::new();
    let mut secs = 10.0f64;
    let mut warmup = 1.0f64;
    let mut span_mb: u64 = 0;
    let mut json = false;
    let mut verify_mb: u64 = 0;
    let mut direct = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--driver" => driver = val(),
            "--path" => path = Some(val()),
            "--pid" => pid = Some(val()),
            "--job" => jobs.push(parse_job(&val())),
            "--seconds" => secs = val().parse().unwrap_or_else(|_| die("bad --seconds")),
            "--warmup" => warmup = val().parse().unwrap_or_else(|_| die("bad --warmup")),
            "--span-mb" => span_mb = val().parse().unwrap_or_else(|_| die("bad --span-mb")),
            "--buffered" => direct = false,
            "--json" => json = true,
            "--verify" => verify_mb = val().parse().unwrap_or_else(|_| die("bad --verify")),
            "-h" | "--help" => {
                println!(
                    "usage: vhost-user-load --driver virtio-blk-vhost-user|io_uring --path PATH \
                     [--pid BACKEND_PID] --job RW:BS:QD... [--seconds N] [--warmup N] \
                     [--span-mb N] [--buffered] [--json]"
                );
                return;
            }
            other => die(&format!("unknown option {other}")),
        }
    }
    let path = path.unwrap_or_else(|| die("--path is required"));
    if jobs.is_empty() {
        jobs = ["randread:4k:32", "randwrite:4k:32", "read:1m:8"].iter().map(|s| parse_job(s)).collect();
    }
    if let Some(device) = match driver.as_str() {
        "vu-blk" => Some(vu::Device::Blk),
        "vu-scsi" => Some(vu::Device::Scsi),
        _ => None,
    } {
        let qd = jobs.iter().map(|j| j.qd).max().unwrap();
        let bs = jobs.iter().map(|j| j.bs).max().unwrap();
        let mut q = vu::VuQueue::connect(&path, device, qd, bs);
        let capacity = q.capacity;
        for slot in 0..qd {
            // SAFETY: `data` checked the slot's data area is inside the shared memory.
            unsafe { std::ptr::write_bytes(q.data(slot, bs), 0xa5, bs) };
        }
        let span = if span_mb > 0 { span_mb << 20 } else { capacity };
        let run = Run { capacity, span, secs, warmup, pid: pid.as_deref(), json };
        run.report(&mut q, &jobs, &driver, &path);
        return;
    }
    let mut b = Blkio::new(&driver).unwrap_or_else(|e| die(&format!("driver {driver}: {e}")));
    b.set_str("path", &path).unwrap_or_else(|e| die(&format!("path: {e}")));
    if driver == "io_uring" {
        b.set_bool("direct", direct).unwrap_or_else(|e| die(&format!("direct: {e}")));
    }
    b.connect().unwrap_or_else(|e| die(&format!("connect {path}: {e}")));
    b.set_i32("num-queues", 1).unwrap_or_else(|e| die(&format!("num-queues: {e}")));
    let mut started = b.start().unwrap_or_else(|e| die(&format!("start: {e}")));
    let mut q = started.queues.remove(0);
    let capacity = b.get_u64("capacity").unwrap_or_else(|e| die(&format!("capacity: {e}")));
    let span = if span_mb > 0 { span_mb << 20 } else { capacity };
    let align = b.get_u64("mem-region-alignment").unwrap_or(4096).max(4096) as usize;
    let need = jobs.iter().map(|j| j.bs * j.qd).max().unwrap().max(VERIFY_CHUNK);
    let len = need.div_ceil(align) * align;
    let region = b.alloc_mem_region(len).unwrap_or_else(|e| die(&format!("alloc_mem_region: {e}")));
    b.map_mem_region(&region).unwrap_or_else(|e| die(&format!("map_mem_region: {e}")));
    let buf = region.addr as *mut u8;
    // SAFETY: the region is len bytes of writable shared memory owned by b.
    unsafe { std::ptr::write_bytes(buf, 0xa5, len) };

    if verify_mb > 0 {
        let bytes = verify(&mut q, buf, capacity, verify_mb << 20);
        println!("VERIFY OK bytes={bytes}");
        drop(q);
        b.unmap_mem_region(&region);
        return;
    }
    let run = Run { capacity, span, secs, warmup, pid: pid.as_deref(), json };
    let mut bq = BlkioQueue { q: &mut q, buf, comps: Vec::new() };
    run.report(&mut bq, &jobs, &driver, &path);
    drop(bq);
    drop(q);
    b.unmap_mem_region(&region);
}
