//! Surviving SIGBUS in memory that a peer process can truncate.
//!
//! A shared mapping of a file faults with SIGBUS where the file no longer reaches: a
//! vhost-user frontend that shrinks the memfd it handed over can kill the backend at
//! its next access to guest memory. Where the peer sealed the file against shrinking
//! (`F_SEAL_SHRINK`) this cannot happen; elsewhere [`Backing::PeerFd`] registers the
//! block's mapping here, in a fixed, lock-free table, and a process-wide SIGBUS handler
//! recognises faults inside registered ranges. It replaces the whole range with
//! anonymous zero pages (`mmap(MAP_FIXED)`: the faulting access is retried and reads
//! zeros), marks the range's [`FaultReport`] and makes its eventfd readable, so that
//! the owner (the vhost-user connection) can end that peer's session; the rest of the
//! process never notices. A fault anywhere else goes to the action installed before
//! ours (Rust's stack-overflow handler, or the default: the process dies with SIGBUS,
//! as before).
//!
//! Everything the handler does is async-signal-safe: atomic loads and stores, `mmap`,
//! `write` to an eventfd, `sigaction` and `raise`. Unregistering a range waits until
//! no handler is running before the mapping may be unmapped, so a handler never
//! remaps an address range that something else has reused.
//!
//! [`Backing::PeerFd`]: crate::Backing::PeerFd

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// Where faults in a peer's memory are reported: one per peer (a vhost-user
/// connection), shared by all of its blocks.
#[derive(Debug)]
pub struct FaultReport {
    eventfd: OwnedFd,
    faulted: AtomicBool,
}

impl FaultReport {
    /// A report with no fault yet.
    ///
    /// # Errors
    ///
    /// The `eventfd` error.
    pub fn new() -> io::Result<Arc<FaultReport>> {
        // SAFETY: eventfd takes a count and flags and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(FaultReport {
            // SAFETY: a fresh descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            faulted: AtomicBool::new(false),
        }))
    }

    /// Whether an access to one of the peer's blocks faulted (its memory is zeros now).
    pub fn faulted(&self) -> bool {
        // Acquire: pairs with the handler's Release store.
        self.faulted.load(Ordering::Acquire)
    }
}

/// Readable once a fault was reported (poll it beside the peer's socket).
impl AsFd for FaultReport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }
}

const FREE: u8 = 0;
/// Being filled in, or being torn down: the handler skips it.
const BUSY: u8 = 1;
const ACTIVE: u8 = 2;

/// How many mappings can be guarded at once (a vhost-user frontend may have up to
/// 509 regions; several exports share the table).
const SLOTS: usize = 4096;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    /// An `Arc<FaultReport>` turned into a raw pointer while the slot is in use.
    report: AtomicPtr<FaultReport>,
}

#[allow(clippy::declare_interior_mutable_const)] // each array element gets its own copy
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    report: AtomicPtr::new(std::ptr::null_mut()),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Handlers running now (any thread).
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// The SIGBUS action before ours, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

/// A registered range; unregisters on drop (before the mapping is unmapped).
#[derive(Debug)]
pub(crate) struct Guard {
    slot: usize,
}

/// Registers `[start, start + len)` (a mapping of a peer's file) with `report`.
///
/// # Errors
///
/// `OutOfMemory` when every slot is taken; the `sigaction` error of the first call.
pub(crate) fn guard(start: *mut u8, len: usize, report: &Arc<FaultReport>) -> io::Result<Guard> {
    install()?;
    for (i, slot) in TABLE.iter().enumerate() {
        if slot
            .state
            .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            slot.start.store(start as usize, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
            let report = Arc::into_raw(Arc::clone(report)).cast_mut();
            slot.report.store(report, Ordering::Relaxed);
            // Release: the handler's Acquire load of ACTIVE sees the fields above.
            slot.state.store(ACTIVE, Ordering::Release);
            return Ok(Guard { slot: i });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("more than {SLOTS} peer mappings to guard against SIGBUS"),
    ))
}

impl Drop for Guard {
    fn drop(&mut self) {
        let slot = &TABLE[self.slot];
        // SeqCst, with the handler's SeqCst increment of IN_HANDLER and load of the
        // state (Dekker): either the handler sees BUSY, or we see it running and wait.
        slot.state.store(BUSY, Ordering::SeqCst);
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        let report = slot.report.swap(std::ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: `guard` stored a pointer from `Arc::into_raw`, taken back once, here;
        // no handler can still be reading it (waited above).
        drop(unsafe { Arc::from_raw(report) });
        slot.state.store(FREE, Ordering::Release);
    }
}

fn install() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: sigaction is plain data; zeroed is a valid empty value, filled below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as *const () as usize;
        // SA_ONSTACK: run on the thread's alternate stack where there is one (Rust
        // sets one up for its own stack-overflow handler, which we may hand over to).
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `action.sa_mask` is a valid sigset_t to initialize.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above, the previous action's out value.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to initialized actions; `handler` has the
        // SA_SIGINFO signature and is async-signal-safe (see the module docs).
        if unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) } != 0 {
            result = Err(io::Error::last_os_error());
            return;
        }
        let _ = PREVIOUS.set(previous);
    });
    result?;
    if PREVIOUS.get().is_none() {
        return Err(io::Error::other("the SIGBUS guard could not be installed"));
    }
    Ok(())
}

/// Replaces a faulting registered range with zero pages; hands anything else on.
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for a memory access (BUS_ADRERR & co.), not
    // sent by a process (SI_USER, SI_TKILL, SI_QUEUE are <= 0).
    let handled = code > 0 && TABLE.iter().any(|slot| recover(slot, addr));
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    if !handled {
        // SAFETY: forwarded unchanged from our own invocation.
        unsafe { hand_over(sig, info, context) };
    }
}

/// If `addr` is in `slot`'s range: zero pages over the range, the report marked.
fn recover(slot: &Slot, addr: usize) -> bool {
    if slot.state.load(Ordering::SeqCst) != ACTIVE {
        return false;
    }
    let (start, len) = (
        slot.start.load(Ordering::Relaxed),
        slot.len.load(Ordering::Relaxed),
    );
    if addr.wrapping_sub(start) >= len {
        return false;
    }
    // SAFETY: `[start, start + len)` is the peer mapping this slot guards, still
    // mapped (its Guard unregisters before the unmap and waits for handlers like
    // this one). Replacing it in place changes no Rust-visible object: accesses go
    // through volatile slices, and now read zeros instead of faulting.
    let mapped = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return false;
    }
    let report = slot.report.load(Ordering::Relaxed);
    // SAFETY: the slot is ACTIVE and its Guard waits for this handler before it
    // releases the Arc, so `report` points to a live FaultReport.
    let report = unsafe { &*report };
    // Release: pairs with `FaultReport::faulted`'s Acquire.
    report.faulted.store(true, Ordering::Release);
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array to our own non-blocking eventfd.
    let _ = unsafe { libc::write(report.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
    true
}

/// Runs the SIGBUS action that was installed before ours.
///
/// # Safety
///
/// Only from the signal handler, with its arguments.
unsafe fn hand_over(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.get().map(|p| (p.sa_sigaction, p.sa_flags));
    match previous {
        Some((f, flags)) if f != libc::SIG_DFL && f != libc::SIG_IGN => {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: installed with SA_SIGINFO, so it has this signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(f) };
                f(sig, info, context);
            } else {
                // SAFETY: installed without SA_SIGINFO: a plain handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
                f(sig);
            }
        }
        _ => {
            // The default action: die with SIGBUS. A fault retried after we return
            // meets it; a signal sent by a process is raised again (delivered once this
            // handler returns and unblocks it).
            // SAFETY: sigaction with a zeroed (SIG_DFL, no flags) action and raise are
            // async-signal-safe and take valid arguments.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
                if (*info).si_code <= 0 {
                    libc::raise(sig);
                }
            }
        }
    }
}
