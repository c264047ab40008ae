//! Deterministic regression tests for the two hazards that stress tests only hit by
//! luck. Each parks a thread at a `test_hooks` pause point, so the interleaving that
//! breaks a buggy variant happens on every run (tests/mutations at the repository root
//! holds the buggy variants; scripts/mutation-check proves these tests catch them).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::domain::{Domain, Record};
use crate::test_hooks::{self, Point};

/// How long a correct `synchronize()` is given to (wrongly) return while a reader it
/// must wait for is still in its section. A buggy one returns within microseconds; a
/// correct one never does, so this bounds only the passing run's duration.
const MUST_STILL_WAIT: Duration = Duration::from_millis(500);

/// Runs `domain.synchronize()` on another thread while a reader is in a section it must
/// wait for, and fails if it returns before `leave` ends that section.
fn assert_synchronize_waits(domain: &Arc<Domain>, leave: mpsc::Sender<()>, what: &str) {
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = mpsc::channel();
    let updater = {
        let (domain, done) = (domain.clone(), done.clone());
        thread::spawn(move || {
            started_tx.send(()).unwrap();
            domain.synchronize();
            done.store(true, Ordering::SeqCst);
        })
    };
    // Counted from when the updater runs, not from the spawn (a loaded machine may take
    // long to schedule a new thread).
    started.recv().unwrap();
    let deadline = Instant::now() + MUST_STILL_WAIT;
    while Instant::now() < deadline && !done.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
    let returned_early = done.load(Ordering::SeqCst);
    leave.send(()).unwrap();
    updater.join().unwrap();
    assert!(
        !returned_early,
        "synchronize() returned while {what} was still in its read section"
    );
}

/// A reader thread on `domain`: parks at the phase snapshot if `park_at_snapshot` (sends
/// on `parked`, resumes on `resume`), reports once it is inside its section, and leaves
/// when told.
struct Reader {
    entered: mpsc::Receiver<()>,
    leave: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

fn reader(domain: &Arc<Domain>, park: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>) -> Reader {
    let (entered_tx, entered) = mpsc::channel();
    let (leave, leave_rx) = mpsc::channel();
    let domain = domain.clone();
    let thread = thread::spawn(move || {
        let rec = Record::new();
        // SAFETY: `rec` lives on this stack frame until after `unregister` below.
        let slot = unsafe { domain.register(&rec) };
        let mut park = park;
        test_hooks::set(move |point| {
            if point == Point::ReaderSnapshot
                && let Some((parked, resume)) = park.take()
            {
                parked.send(()).unwrap();
                resume.recv().unwrap();
            }
        });
        assert!(domain.read_lock(&rec, false));
        entered_tx.send(()).unwrap();
        leave_rx.recv().unwrap();
        assert!(domain.read_unlock(&rec, false));
        domain.unregister(slot);
    });
    Reader {
        entered,
        leave,
        thread,
    }
}

/// A reader that entered its section before `synchronize()` began is waited for.
#[test]
fn synchronize_waits_for_a_reader_that_entered_before_it() {
    let domain = Arc::new(Domain::new());
    let r = reader(&domain, None);
    r.entered.recv().unwrap();
    assert_synchronize_waits(&domain, r.leave, "a reader that entered before it");
    r.thread.join().unwrap();
}

/// The stale-snapshot reader (module docs of `domain`): it loads the phase, is preempted
/// across a whole grace period (which rightly ignores it: it has not entered yet), then
/// stores the now-old phase and enters. The next grace period flips the phase back to
/// the value the reader stored, so a single scan after the flip takes it for a reader
/// that began after the grace period; only the scan before the flip (the two-phase
/// wait) sees it. rcutorture hits this window in about half of its runs; here the reader
/// is parked in it on every run.
#[test]
fn synchronize_waits_for_a_reader_whose_phase_snapshot_predates_the_last_flip() {
    let domain = Arc::new(Domain::new());
    let (parked_tx, parked) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel();
    let r = reader(&domain, Some((parked_tx, resume_rx)));
    parked.recv().unwrap();
    // The reader holds a phase snapshot but is not in a section yet: this grace period
    // need not wait for it (and must not deadlock on it).
    domain.synchronize();
    resume.send(()).unwrap();
    r.entered.recv().unwrap();
    assert_synchronize_waits(&domain, r.leave, "a reader with a stale phase snapshot");
    r.thread.join().unwrap();
}

/// Payload words while an element is alive.
const ALIVE: u64 = 0xA11C_E5A1_1CE5_A11C;
/// What an element's words become when it is dropped (before its memory is freed).
const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// An element whose drop poisons its own payload and counts itself, so that a reader
/// that reaches it after reclamation sees the poison (in release builds too: the words
/// past the allocator's free-list header keep it until the memory is reused).
struct Poisoned {
    words: [AtomicU64; 8],
    drops: Arc<AtomicUsize>,
}

impl Drop for Poisoned {
    fn drop(&mut self) {
        for w in &self.words {
            w.store(POISON, Ordering::SeqCst);
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// `RcuList` removal must unlink the node before it hands it to `call_rcu`: a grace
/// period that starts in between does not wait for readers that find the node later,
/// through the link that still points to it. The writer is parked just before the
/// unlink; a grace period plus `call_rcu` barrier then runs, and a reader walks the list.
/// A correct list has queued nothing yet, so the element is alive; a list that queued
/// the free first has dropped an element that readers still reach.
#[test]
fn list_removal_queues_the_free_only_after_the_unlink() {
    let drops = Arc::new(AtomicUsize::new(0));
    let list = Arc::new(crate::RcuList::new());
    list.push_back(Poisoned {
        words: std::array::from_fn(|_| AtomicU64::new(ALIVE)),
        drops: drops.clone(),
    });
    let (parked_tx, parked) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel::<()>();
    let writer = {
        let list = list.clone();
        thread::spawn(move || {
            let mut once = Some((parked_tx, resume_rx));
            test_hooks::set(move |point| {
                if point == Point::BeforeUnlink
                    && let Some((parked, resume)) = once.take()
                {
                    parked.send(()).unwrap();
                    resume.recv().unwrap();
                }
            });
            assert!(list.remove_first(|_| true));
        })
    };
    parked.recv().unwrap();
    // Every callback queued so far has run after a full grace period.
    crate::barrier();
    let (dropped, poisoned) = {
        let guard = crate::read();
        // Only the first node is touched: a freed node's `next` may hold allocator data.
        let first = list
            .iter(&guard)
            .next()
            .expect("the element is still linked");
        let poisoned = first
            .words
            .iter()
            .filter(|w| w.load(Ordering::SeqCst) != ALIVE)
            .count();
        (drops.load(Ordering::SeqCst), poisoned)
    };
    resume.send(()).unwrap();
    writer.join().unwrap();
    assert_eq!(
        (dropped, poisoned),
        (0, 0),
        "an element still linked in the list was dropped ({dropped} drops) and a reader \
         that found it read {poisoned} poisoned words: call_rcu was issued before the unlink"
    );
    crate::barrier();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the removed element was not reclaimed"
    );
}
