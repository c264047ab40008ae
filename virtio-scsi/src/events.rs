//! The event queue: events posted from any thread (hotplug on the main thread) are
//! written into the buffers the driver posted, in the event queue's iothread. With no
//! buffer the event is dropped and the next one carries `VIRTIO_SCSI_T_EVENTS_MISSED`;
//! when a buffer arrives after a drop, a NO_EVENT|EVENTS_MISSED event tells the driver
//! to rescan (QEMU's `events_dropped`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use aio_context::AioHandle;
use block_dma::SgList;
use virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_EVENTS_MISSED;
use virtio_core::Completion;

use crate::chain;
use crate::wire::{EVENT_SIZE, Event};

/// Posted event buffers per device: (id, buffer, completion).
type Buffers = HashMap<u64, VecDeque<(u64, SgList, Completion)>>;

thread_local! {
    /// The event buffers the driver posted, per device, in the event queue's iothread.
    static BUFFERS: RefCell<Buffers> = RefCell::new(HashMap::new());
}

#[derive(Default)]
struct State {
    pending: VecDeque<Event>,
    dropped: bool,
    next_id: u64,
    /// The event queue's iothread, once started.
    handle: Option<AioHandle>,
}

/// A device's events on their way to the driver.
pub(crate) struct Events {
    device: u64,
    state: Mutex<State>,
}

impl Events {
    pub(crate) fn new(device: u64) -> Events {
        Events {
            device,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The event queue runs in `handle`'s context from now on (`None`: stopped; posted
    /// events are then dropped and reported as missed).
    pub(crate) fn set_handle(&self, handle: Option<AioHandle>) {
        self.lock().handle = handle;
    }

    /// Posts `event` from any thread.
    pub(crate) fn post(self: &Arc<Self>, event: Event) {
        let mut st = self.lock();
        match st.handle.clone() {
            Some(handle) => {
                st.pending.push_back(event);
                drop(st);
                let me = self.clone();
                handle.schedule_oneshot(move || me.flush());
            }
            None => st.dropped = true,
        }
    }

    /// A buffer arrived (in the event queue's iothread); returns its handle.
    pub(crate) fn buffer(self: &Arc<Self>, sg: SgList, done: Completion) -> EventBuffer {
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            st.next_id
        };
        BUFFERS.with(|b| {
            b.borrow_mut()
                .entry(self.device)
                .or_default()
                .push_back((id, sg, done))
        });
        {
            let mut st = self.lock();
            if st.dropped && st.pending.is_empty() {
                st.pending.push_back(Event::missed());
                st.dropped = false;
            }
        }
        self.flush();
        EventBuffer {
            events: self.clone(),
            id,
        }
    }

    /// Writes pending events into buffers (in the event queue's iothread).
    pub(crate) fn flush(&self) {
        loop {
            let mut st = self.lock();
            let Some(mut event) = st.pending.pop_front() else {
                return;
            };
            let buf = BUFFERS.with(|b| b.borrow_mut().get_mut(&self.device)?.pop_front());
            let Some((_, sg, done)) = buf else {
                st.dropped = true;
                continue;
            };
            if st.dropped {
                event.event |= VIRTIO_SCSI_T_EVENTS_MISSED;
                st.dropped = false;
            }
            drop(st);
            let ok = chain::write(&done.memory(), &sg, &event.encode());
            done.complete(if ok { EVENT_SIZE as u32 } else { 0 });
        }
    }
}

/// A posted event buffer the runner tracks: "parked" (it waits for an event, not for
/// I/O), so a queue stop returns it to the driver unused.
#[derive(Clone)]
pub(crate) struct EventBuffer {
    events: Arc<Events>,
    id: u64,
}

impl virtio_core::InFlight for EventBuffer {
    fn is_parked(&self) -> bool {
        true
    }

    fn cancel(&self) {
        let buf = BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            let q = b.get_mut(&self.events.device)?;
            let at = q.iter().position(|(id, _, _)| *id == self.id)?;
            q.remove(at)
        });
        if let Some((_, _, done)) = buf {
            done.complete(0);
        }
    }
}
