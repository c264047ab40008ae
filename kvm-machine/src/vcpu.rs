//! vCPU threads: the `KVM_RUN` loop, exit dispatch through the I/O buses, and the
//! park/kick protocol that lets the machine pause, reset and stop them.
//!
//! **Kicking.** A vCPU inside `KVM_RUN` leaves it when a signal arrives. The kicker
//! first changes the control state (under its mutex), then sends [`kick_signal`]. The
//! handler sets `immediate_exit` in this thread's `kvm_run`, so a signal that lands
//! after the thread checked the control state but before it entered `KVM_RUN` still
//! makes `KVM_RUN` return `EINTR` at once: no kick is lost.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use io_bus::IoBus;
use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, Msrs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_run, kvm_sregs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::events::{EventSink, SystemEvent};

thread_local! {
    /// This vCPU thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
    /// Whether this thread is a vCPU thread (which must not wait for vCPUs to park).
    static IS_VCPU: Cell<bool> = const { Cell::new(false) };
    /// Set when this vCPU's last exit asked the machine to reset, power off or exit.
    static STOP_CURRENT: Cell<bool> = const { Cell::new(false) };
}

/// Called where a [`SystemEvent`] that ends or restarts the machine is posted: on a vCPU
/// thread, that vCPU runs no further guest code until the main loop has acted on it (a
/// reset gives it its power-on state; an exit or power-off ends it). QEMU's
/// `cpu_stop_current`. Without it the guest runs on past its own reset request: SeaBIOS,
/// for one, goes on to its next reset method and finally a triple fault, racing the
/// main loop's `-no-reboot` exit.
pub(crate) fn stop_current_vcpu() {
    if IS_VCPU.with(Cell::get) {
        STOP_CURRENT.with(|s| s.set(true));
    }
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's kvm_run mapping (set by the vCPU loop before it
        // first runs, cleared before the VcpuFd that owns the mapping is dropped); the
        // handler runs on that same thread, so the mapping is alive. Only the
        // `immediate_exit` byte is written, with a volatile store, and no Rust reference
        // to it is live across a signal (kvm-ioctls only touches it in
        // `set_kvm_immediate_exit`, which we call on this thread between runs).
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process; idempotent).
pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The shared state vCPU threads park on.
#[derive(Default)]
pub(crate) struct Control {
    state: Mutex<Ctl>,
    cond: Condvar,
}

#[derive(Default)]
struct Ctl {
    paused: bool,
    quit: bool,
    /// Threads waiting in the park loop.
    parked: usize,
    /// Threads that have returned.
    exited: usize,
    /// Bumped by a reset: each thread reloads its power-on state once per value.
    reset_epoch: u64,
}

/// Errors of vCPU control.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// Pausing from a vCPU thread would wait for that thread itself.
    #[error("vCPUs cannot be paused from a vCPU thread; post a request to the main loop")]
    OnVcpuThread,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts paused: threads park until [`resume`](Self::resume).
    pub(crate) fn new_paused() -> Control {
        let c = Control::default();
        c.lock().paused = true;
        c
    }

    /// Asks every vCPU to park and waits until all `threads` have parked or exited. A
    /// vCPU thread that died (panicked) counts as exited ([`run_vcpu_thread`]), so the
    /// wait is bounded by the live vCPUs; one that does not park within
    /// [`PARK_WARNING`] (blocked in a device, which must not happen) is reported on
    /// stderr while the wait goes on.
    pub(crate) fn pause(&self, threads: usize, kick: impl Fn()) -> Result<(), ControlError> {
        if IS_VCPU.with(Cell::get) {
            return Err(ControlError::OnVcpuThread);
        }
        rcu::assert_may_block("pausing the vCPUs");
        self.lock().paused = true;
        kick();
        let start = Instant::now();
        let mut warned = false;
        let mut c = self.lock();
        while c.parked + c.exited < threads {
            let (guard, _) = self
                .cond
                .wait_timeout(c, PARK_WARNING / 10)
                .unwrap_or_else(|e| e.into_inner());
            c = guard;
            if !warned && c.parked + c.exited < threads && start.elapsed() >= PARK_WARNING {
                warned = true;
                tracing::warn!(
                    "{} of {threads} vCPU(s) have not stopped after {} s \
                     (blocked in a device?); still waiting",
                    threads - c.parked - c.exited,
                    PARK_WARNING.as_secs()
                );
            }
        }
        Ok(())
    }

    /// Lets parked vCPUs run again.
    pub(crate) fn resume(&self) {
        self.lock().paused = false;
        self.cond.notify_all();
    }

    /// Whether the vCPUs are asked to stay parked.
    pub(crate) fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Makes every vCPU reload its power-on state before it next runs.
    pub(crate) fn bump_reset(&self) {
        self.lock().reset_epoch += 1;
        self.cond.notify_all();
    }

    /// Tells every vCPU thread to return.
    pub(crate) fn quit(&self, kick: impl Fn()) {
        self.lock().quit = true;
        self.cond.notify_all();
        kick();
    }
}

/// How long a pause waits for the vCPUs before it says so on stderr.
const PARK_WARNING: Duration = Duration::from_secs(5);

/// Counts the vCPU thread as exited when dropped, also when it unwinds: the rendezvous
/// in [`Control::pause`] and [`Control::quit`] never waits for a thread that is gone.
struct ExitCount(Arc<Control>);

impl Drop for ExitCount {
    fn drop(&mut self) {
        self.0.lock().exited += 1;
        self.0.cond.notify_all();
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The body of vCPU thread `index`: runs `body`; if it panics, posts
/// [`SystemEvent::Fatal`] with the panic message (the main loop ends the process with
/// status 1), and in every case counts the thread as exited.
pub(crate) fn run_vcpu_thread(
    index: u32,
    control: Arc<Control>,
    events: &EventSink,
    body: impl FnOnce(),
) {
    let _exit = ExitCount(control);
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        events(SystemEvent::Fatal(format!(
            "vCPU {index} panicked: {}",
            panic_message(&*payload)
        )));
    }
}

/// The register state a vCPU gets on power-on and reset.
#[derive(Clone)]
pub(crate) struct InitialState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: Option<kvm_lapic_state>,
}

impl InitialState {
    /// Reads the state KVM gave a freshly created vCPU (the x86 reset state).
    pub(crate) fn capture(fd: &VcpuFd) -> std::result::Result<InitialState, kvm_ioctls::Error> {
        Ok(InitialState {
            regs: fd.get_regs()?,
            sregs: fd.get_sregs()?,
            fpu: fd.get_fpu()?,
            lapic: fd.get_lapic().ok(),
        })
    }
}

/// How the boot vCPU enters a directly loaded kernel.
#[derive(Clone)]
pub(crate) struct BootEntry {
    pub(crate) regs: kvm_regs,
    pub(crate) sregs: kvm_sregs,
    pub(crate) fpu: kvm_fpu,
    pub(crate) msrs: Vec<(u32, u64)>,
    /// LAPIC LINT0 as ExtINT, LINT1 as NMI (firmware does this when there is one).
    pub(crate) lint: bool,
}

/// MSRs given their power-on value on every reset: SYSENTER/SYSCALL state, MTRRs off
/// (firmware programs them), the KVM paravirtual MSRs off (a rebooting guest's kvmclock
/// must stop writing into memory), fast strings on.
const RESET_MSRS: &[(u32, u64)] = &[
    (0x174, 0),       // IA32_SYSENTER_CS
    (0x175, 0),       // IA32_SYSENTER_ESP
    (0x176, 0),       // IA32_SYSENTER_EIP
    (0xc000_0081, 0), // STAR
    (0xc000_0082, 0), // LSTAR
    (0xc000_0083, 0), // CSTAR
    (0xc000_0084, 0), // SYSCALL_MASK
    (0xc000_0102, 0), // KERNEL_GS_BASE
    (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    (0x2ff, 0),       // MTRRdefType: MTRRs disabled
    (0x4b56_4d00, 0), // MSR_KVM_WALL_CLOCK_NEW
    (0x4b56_4d01, 0), // MSR_KVM_SYSTEM_TIME_NEW
    (0x4b56_4d02, 0), // MSR_KVM_ASYNC_PF_EN
    (0x4b56_4d03, 0), // MSR_KVM_STEAL_TIME
    (0x4b56_4d04, 0), // MSR_KVM_PV_EOI_EN
];

/// Sets MSRs one at a time, skipping those this KVM refuses (PVM lacks some).
pub(crate) fn set_msrs(fd: &VcpuFd, msrs: &[(u32, u64)]) {
    for &(index, data) in msrs {
        let entry = kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        if let Ok(list) = Msrs::from_entries(&[entry]) {
            let _ = fd.set_msrs(&list);
        }
    }
}

/// What a vCPU thread owns.
pub(crate) struct Vcpu {
    pub(crate) index: u32,
    pub(crate) fd: VcpuFd,
    pub(crate) pio: Arc<IoBus>,
    pub(crate) mmio: Arc<IoBus>,
    pub(crate) control: Arc<Control>,
    pub(crate) events: EventSink,
    pub(crate) initial: InitialState,
    pub(crate) boot: Arc<Mutex<Option<BootEntry>>>,
    /// No `KVM_RUN` yet (the boot-time marks of the first run and exit).
    pub(crate) first_run: bool,
}

/// What the exit loop decided.
enum Step {
    Continue,
    /// The vCPU cannot go on: park until a reset.
    Failed(String),
}

impl Vcpu {
    /// The thread body: the exit loop until quit. A panic in it (a device bug) ends the
    /// process through the main loop instead of leaving a dead vCPU that every later
    /// pause would wait for ([`run_vcpu_thread`]).
    pub(crate) fn run(mut self) {
        IS_VCPU.with(|v| v.set(true));
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run_ptr));
        let (index, control, events) = (self.index, self.control.clone(), self.events.clone());
        run_vcpu_thread(index, control, &events, || self.run_loop(run_ptr));
        // Before `self.fd` (and the kvm_run mapping) is dropped: a late kick must not
        // write into an unmapped page.
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    fn run_loop(&mut self, run_ptr: *mut kvm_run) {
        let mut epoch = u64::MAX; // apply the power-on state before the first run
        let mut failed = false;
        // Parked after requesting a reset/power-off/exit, until a reset (or quit).
        let mut stopped = false;
        loop {
            let reset = {
                let mut c = self.control.lock();
                loop {
                    if c.quit {
                        return; // counted as exited by `run_vcpu_thread`
                    }
                    if c.reset_epoch != epoch {
                        epoch = c.reset_epoch;
                        break true;
                    }
                    if c.paused || failed || stopped {
                        c.parked += 1;
                        self.control.cond.notify_all();
                        c = self.control.cond.wait(c).unwrap_or_else(|e| e.into_inner());
                        c.parked -= 1;
                        continue;
                    }
                    break false;
                }
            };
            if reset {
                stopped = false;
                if let Err(e) = self.apply_reset() {
                    (self.events)(SystemEvent::InternalError(format!(
                        "vCPU {}: cannot reset: {e}",
                        self.index
                    )));
                    failed = true;
                } else {
                    failed = false;
                }
                continue;
            }
            if let Step::Failed(message) = self.run_once(run_ptr) {
                (self.events)(SystemEvent::InternalError(message));
                failed = true;
            }
            stopped |= STOP_CURRENT.with(|s| s.replace(false));
        }
    }

    /// Loads the power-on state (and, on the boot vCPU, the kernel entry state).
    fn apply_reset(&mut self) -> std::result::Result<(), kvm_ioctls::Error> {
        let fd = &self.fd;
        let init = &self.initial;
        fd.set_sregs(&init.sregs)?;
        fd.set_regs(&init.regs)?;
        fd.set_fpu(&init.fpu)?;
        if let Some(lapic) = &init.lapic {
            fd.set_lapic(lapic)?;
        }
        set_msrs(fd, RESET_MSRS);
        let mp_state = if self.index == 0 {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_UNINITIALIZED
        };
        fd.set_mp_state(kvm_mp_state { mp_state })?;
        if self.index == 0 {
            let boot = self.boot.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(boot) = boot {
                fd.set_sregs(&boot.sregs)?;
                fd.set_regs(&boot.regs)?;
                fd.set_fpu(&boot.fpu)?;
                set_msrs(fd, &boot.msrs);
                if boot.lint {
                    super::linux::set_lint(fd)?;
                }
            }
        }
        Ok(())
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self, run_ptr: *mut kvm_run) -> Step {
        // SAFETY: `run_ptr` is this vCPU's kvm_run mapping, alive while `self.fd` is;
        // the kernel is not running this vCPU (we are on its thread, outside KVM_RUN).
        // The `io` union member is plain data (the kernel fills it on KVM_EXIT_IO and
        // leaves garbage otherwise, which we only use for KVM_EXIT_IO exits). It is read
        // by value with a volatile load; the data slice KVM_RUN hands out lies at
        // `data_offset`, past the header, so the two do not overlap.
        let io_size = || unsafe {
            let io = std::ptr::addr_of!((*run_ptr).__bindgen_anon_1.io).read_volatile();
            usize::from(io.size)
        };
        if self.first_run {
            qemu_log::boot_time::mark("first-kvm-run");
        }
        let result = self.fd.run();
        if std::mem::take(&mut self.first_run) {
            qemu_log::boot_time::mark("first-exit");
        }
        tracing::trace!(vcpu = self.index, ?result, "KVM_RUN exit");
        match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = io_size().clamp(1, 8);
                for chunk in data.chunks_mut(size) {
                    self.pio.read(u64::from(port), chunk);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let size = io_size().clamp(1, 8);
                for chunk in data.chunks(size) {
                    self.pio.write(u64::from(port), chunk);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                // Writes to nothing (and to the read-only BIOS) are dropped.
                self.mmio.write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => {
                // The in-kernel LAPIC handles HLT; seeing one means it did not. Yield.
                std::thread::yield_now();
                Step::Continue
            }
            Ok(VcpuExit::Shutdown) => {
                // A triple fault resets a PC.
                (self.events)(SystemEvent::Reset);
                self.wait_for_reset();
                Step::Continue
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => (self.events)(SystemEvent::Shutdown),
                    KVM_SYSTEM_EVENT_RESET => (self.events)(SystemEvent::Reset),
                    other => {
                        return Step::Failed(format!(
                            "vCPU {}: KVM system event {other}",
                            self.index
                        ));
                    }
                }
                self.wait_for_reset();
                Step::Continue
            }
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Failed(format!(
                "vCPU {}: KVM entry failed, hardware reason {reason:#x} on host CPU {cpu}{}",
                self.index,
                self.describe()
            )),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: as above; the `internal` member is valid for this exit.
                let suberror = unsafe {
                    std::ptr::addr_of!((*run_ptr).__bindgen_anon_1.internal)
                        .read_volatile()
                        .suberror
                };
                Step::Failed(format!(
                    "vCPU {}: KVM internal error, suberror {suberror} (1 = emulation failure){}",
                    self.index,
                    self.describe()
                ))
            }
            Ok(other) => {
                let what = format!("{other:?}");
                Step::Failed(format!(
                    "vCPU {}: unexpected KVM exit {what}{}",
                    self.index,
                    self.describe()
                ))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => Step::Failed(format!("vCPU {}: KVM_RUN failed: {e}", self.index)),
        }
    }

    /// After asking the main loop for a reset or shutdown: do not run on (the guest
    /// would run past its reset), wait until the main loop pauses us.
    fn wait_for_reset(&self) {
        let start = self.control.lock().reset_epoch;
        let mut c = self.control.lock();
        while !c.quit && !c.paused && c.reset_epoch == start {
            let (guard, _) = self
                .control
                .cond
                .wait_timeout(c, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
            c = guard;
        }
    }

    /// Registers for an error report.
    fn describe(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "\n  RIP={:#x} RSP={:#x} RAX={:#x} RFLAGS={:#x} CS={:#x}(base {:#x}) CR0={:#x} CR3={:#x} CR4={:#x} EFER={:#x}",
                r.rip,
                r.rsp,
                r.rax,
                r.rflags,
                s.cs.selector,
                s.cs.base,
                s.cr0,
                s.cr3,
                s.cr4,
                s.efer
            ),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A vCPU thread that panics while a pause waits for it: the pause returns (the dead
    /// thread counts as exited) and the main loop gets the panic message. Before issue
    /// 14 the thread died uncounted and `pause` waited forever.
    #[test]
    fn a_pause_does_not_wait_for_a_vcpu_that_panicked() {
        let control = Arc::new(Control::default());
        let (event_tx, event_rx) = mpsc::channel();
        let event_tx = Mutex::new(event_tx);
        let events: EventSink = Arc::new(move |e| {
            let _ = event_tx.lock().unwrap().send(e);
        });
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let c = control.clone();
        let vcpu = std::thread::spawn(move || {
            run_vcpu_thread(3, c, &events, || {
                let _ = go_rx.recv();
                panic!("a device bug");
            })
        });
        let c = control.clone();
        let pauser = std::thread::spawn(move || c.pause(1, || {}));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pauser.is_finished(), "the vCPU is running: pause waits");
        go_tx.send(()).unwrap();
        let start = Instant::now();
        while !pauser.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "pause waits for a dead vCPU"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pauser.join().unwrap(), Ok(()));
        vcpu.join().expect("the panic is caught");
        assert_eq!(
            event_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            SystemEvent::Fatal("vCPU 3 panicked: a device bug".into())
        );
    }
}
