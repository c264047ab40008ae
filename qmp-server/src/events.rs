//! Events: emitted from any thread, delivered to negotiated clients on the monitor's
//! thread, in emission order.
//!
//! An emitter formats and timestamps the event line at once and appends it to a queue
//! under a mutex (the queue's order is the emission order), then sets an
//! `EventNotifier` that the monitor watches in its `AioContext`. The monitor also drains
//! the queue around every command, so an event caused by a command (STOP from `stop`)
//! precedes the command's reply, as in QEMU.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use aio_context::EventNotifier;
use serde_json::Value;

use crate::protocol::event_line;

/// Events kept while the monitor's thread is busy; older ones are dropped beyond this
/// (a stuck main loop must not grow memory without bound).
const MAX_QUEUED: usize = 4096;

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    dropped: u64,
    closed: bool,
}

pub(crate) struct Shared {
    queue: Mutex<Queue>,
    pub(crate) notifier: EventNotifier,
}

/// Emits QMP events from any thread (cheap to clone, `Send + Sync`). Events reach the
/// clients that have completed capabilities negotiation; with none, they are dropped,
/// as QEMU does.
#[derive(Clone)]
pub struct QmpEvents {
    shared: Arc<Shared>,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl QmpEvents {
    /// An empty queue. A [`Server`](crate::Server) makes its own; a queue of one's
    /// own serves another transport (drain it with [`QmpEvents::drain`]).
    ///
    /// # Errors
    ///
    /// The queue's eventfd cannot be created.
    pub fn new() -> std::io::Result<QmpEvents> {
        Ok(QmpEvents {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                notifier: EventNotifier::new(false)?,
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Emits `name` with optional `data` (an object), timestamped now. The event's
    /// owner formats `data` with QAPI's member names and order (QEMU's key order is
    /// kept on the wire).
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let line = event_line(name, data.as_ref());
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                return;
            }
            if q.lines.len() >= MAX_QUEUED {
                q.lines.pop_front();
                q.dropped += 1;
            }
            q.lines.push_back(line);
        }
        // Cannot fail on our own eventfd (a saturated counter still reads as set).
        let _ = self.shared.notifier.set();
    }

    /// Takes the queued event lines (`\r\n`-terminated, oldest first) and how many
    /// were dropped since the last drain because the queue was full (the server's
    /// thread does this).
    pub fn drain(&self) -> (Vec<Vec<u8>>, u64) {
        self.shared.notifier.test_and_clear();
        let mut q = lock(&self.shared.queue);
        let dropped = std::mem::take(&mut q.dropped);
        (q.lines.drain(..).collect(), dropped)
    }

    /// Stops accepting events (the monitor is gone).
    pub(crate) fn close(&self) {
        let mut q = lock(&self.shared.queue);
        q.closed = true;
        q.lines.clear();
    }
}

impl std::fmt::Debug for QmpEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpEvents").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(e: &QmpEvents) -> Vec<String> {
        e.drain()
            .0
            .into_iter()
            .map(|l| {
                let s = String::from_utf8(l).unwrap();
                s[s.find("\"event\"").unwrap()..].to_string()
            })
            .collect()
    }

    #[test]
    fn formats_and_order() {
        let e = QmpEvents::new().unwrap();
        e.emit("STOP", None);
        e.emit(
            "RESET",
            Some(serde_json::json!({"guest": false, "reason": "host-qmp-system-reset"})),
        );
        assert_eq!(
            lines(&e),
            [
                "\"event\": \"STOP\"}\r\n",
                "\"event\": \"RESET\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}\r\n",
            ]
        );
        e.close();
        e.emit("X", None);
        assert!(lines(&e).is_empty());
    }

    #[test]
    fn queue_is_bounded() {
        let e = QmpEvents::new().unwrap();
        for _ in 0..MAX_QUEUED + 10 {
            e.emit("X", None);
        }
        let (lines, dropped) = e.drain();
        assert_eq!((lines.len(), dropped), (MAX_QUEUED, 10));
    }
}
