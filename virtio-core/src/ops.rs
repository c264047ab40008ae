//! The device's queue operations (start, stop, "reset done"), run one at a time in
//! submission order, each on the iothread that serves its queue, without the
//! submitter waiting.
//!
//! Why: a stop drains the queue's in-flight I/O. Done synchronously it made the caller
//! wait for that I/O: a vCPU inside its port-dispatch RCU read section (a guest's
//! reset), or the `call_rcu` reclaim thread (the device's `Drop` after `device_del`).
//! Now the caller only submits; the drain runs in the queue's own context. Order is
//! kept across contexts and across nested polls: the next operation is scheduled only
//! when the previous one has returned, so a queue restarted after a reset can never
//! run beside, or before, the drain of its previous life.
//!
//! An operation whose context has gone away (its iothread stopped, the closure dropped
//! unrun) still lets the chain go on: the chain advances when the operation is
//! dropped, run or not.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use aio_context::AioHandle;

type OpFn = Box<dyn FnOnce() + Send>;

/// Runs submitted operations one at a time, in order, each in its context.
#[derive(Default)]
pub(crate) struct OpChain {
    state: Mutex<ChainState>,
}

#[derive(Default)]
struct ChainState {
    /// An operation is scheduled or running.
    busy: bool,
    waiting: VecDeque<(Option<AioHandle>, OpFn)>,
}

/// One operation in flight: dropping it (after running it, or unrun) starts the next.
struct InFlight {
    chain: Arc<OpChain>,
    op: Option<OpFn>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        drop(self.op.take());
        self.chain.finished();
    }
}

impl OpChain {
    fn lock(&self) -> MutexGuard<'_, ChainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` after every operation submitted before it has returned: scheduled on
    /// `on`'s context, or (`None`) on whichever thread finishes the previous one (the
    /// caller's, if the chain is idle).
    pub(crate) fn submit(
        self: &Arc<Self>,
        on: Option<&AioHandle>,
        op: impl FnOnce() + Send + 'static,
    ) {
        let mut st = self.lock();
        st.waiting.push_back((on.cloned(), Box::new(op)));
        if st.busy {
            return;
        }
        st.busy = true;
        drop(st);
        self.dispatch_next();
    }

    /// Starts the next operation (the chain is busy on entry); inline ones run here,
    /// in a loop rather than recursively.
    fn dispatch_next(self: &Arc<Self>) {
        loop {
            let next = {
                let mut st = self.lock();
                match st.waiting.pop_front() {
                    Some(op) => op,
                    None => {
                        st.busy = false;
                        return;
                    }
                }
            };
            match next {
                (Some(on), op) => {
                    let mut flight = InFlight {
                        chain: self.clone(),
                        op: Some(op),
                    };
                    on.schedule_oneshot(move || {
                        if let Some(op) = flight.op.take() {
                            op();
                        }
                        drop(flight);
                    });
                    return;
                }
                (None, op) => op(),
            }
        }
    }

    /// An operation in a context returned (or was dropped unrun).
    fn finished(self: &Arc<Self>) {
        self.dispatch_next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aio_context::IoThread;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn operations_run_in_order_across_contexts_without_waiting() {
        let a = IoThread::spawn("ops-a").unwrap();
        let b = IoThread::spawn("ops-b").unwrap();
        let chain = Arc::new(OpChain::default());
        let (tx, rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let log = move |tag: &'static str| {
            let tx = tx.clone();
            move || tx.send(tag).unwrap()
        };
        // The first operation blocks its iothread until the test lets it go: the ones
        // behind it must wait, and submitting them must not.
        let first = log("a1");
        chain.submit(Some(a.handle()), move || {
            gate_rx.recv().unwrap();
            first();
        });
        chain.submit(Some(b.handle()), log("b1"));
        chain.submit(None, log("inline"));
        chain.submit(Some(a.handle()), log("a2"));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        gate_tx.send(()).unwrap();
        let got: Vec<_> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, ["a1", "b1", "inline", "a2"]);
    }

    #[test]
    fn an_operation_dropped_unrun_lets_the_chain_go_on() {
        let chain = Arc::new(OpChain::default());
        let gone = IoThread::spawn("ops-gone").unwrap();
        let handle = gone.handle().clone();
        gone.stop();
        let (tx, rx) = mpsc::channel();
        chain.submit(Some(&handle), || unreachable!("its context has stopped"));
        chain.submit(None, move || tx.send(()).unwrap());
        // The stopped context's queue is dropped with its last handle.
        drop(handle);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the chain advanced past the dropped operation");
    }
}
