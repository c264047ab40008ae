//! Loom model of the notify/sleep protocol ([`aio_context::wakeup`]): a producer that
//! publishes work and notifies, against a loop that announces it may sleep, looks for
//! work, and sleeps if it finds none. Fails if the loop can sleep with work pending and
//! no kick on its eventfd (a lost wake-up). Run with `RUSTFLAGS="--cfg loom" cargo test
//! -p aio-context --release --test loom_notify`.

#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use aio_context::wakeup::Wakeup;

#[test]
fn no_lost_wakeup() {
    loom::model(|| {
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = kicks.clone();
        let wakeup = Arc::new(Wakeup::new(move || {
            k.fetch_add(1, Ordering::Relaxed);
        }));
        let work = Arc::new(AtomicBool::new(false));

        let producer = {
            let (wakeup, work) = (wakeup.clone(), work.clone());
            thread::spawn(move || {
                work.store(true, Ordering::Relaxed);
                wakeup.notify(false);
            })
        };

        wakeup.prepare_to_sleep();
        let found = work.load(Ordering::Relaxed);
        producer.join().unwrap();
        // The loop would now sleep on the eventfd unless it found work: then a kick
        // must be there to wake it.
        assert!(found || kicks.load(Ordering::Relaxed) > 0, "lost wake-up");
        wakeup.finish_sleep();
    });
}
