//! The event queue: events posted from any thread (hotplug on the main thread) are
//! written into the buffers the driver posted, in the event queue's iothread. An event
//! that finds no buffer popped yet first pops the queue's avail ring (QEMU's
//! `virtio_scsi_push_event` pops the queue itself): buffers the driver made available
//! without a kick, or whose kick is not handled yet, are used, not missed. With no
//! buffer at all the event is dropped and the next one carries
//! `VIRTIO_SCSI_T_EVENTS_MISSED`; when a buffer arrives after a drop, a
//! NO_EVENT|EVENTS_MISSED event tells the driver to rescan (QEMU's `events_dropped`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use aio_context::AioHandle;
use block_dma::SgList;
use virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_EVENTS_MISSED;
use virtio_core::{Completion, QueuePoller};

use crate::chain;
use crate::wire::{EVENT_SIZE, Event};

/// Posted event buffers per device: (id, buffer, completion).
type Buffers = HashMap<u64, VecDeque<(u64, SgList, Completion)>>;

thread_local! {
    /// The event buffers the driver posted, per device, in the event queue's iothread.
    static BUFFERS: RefCell<Buffers> = RefCell::new(HashMap::new());
    /// A flush is popping an event queue on this thread (a flush inside it, from the
    /// buffers it pops, does not pop again).
    static POPPING: Cell<bool> = const { Cell::new(false) };
}

#[derive(Default)]
struct State {
    pending: VecDeque<Event>,
    dropped: bool,
    next_id: u64,
    /// The event queue's iothread, once started.
    handle: Option<AioHandle>,
    /// Pops the event queue's avail ring (in that iothread), once started.
    poller: Option<QueuePoller>,
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
        let mut st = self.lock();
        if handle.is_none() {
            st.poller = None;
        }
        st.handle = handle;
    }

    /// The running event queue's poller (after its start was submitted).
    pub(crate) fn set_poller(&self, poller: Option<QueuePoller>) {
        self.lock().poller = poller;
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

    /// Writes pending events into buffers (in the event queue's iothread). With no
    /// buffer popped, pops the avail ring once first.
    pub(crate) fn flush(&self) {
        let mut popped = false;
        loop {
            let mut st = self.lock();
            let Some(mut event) = st.pending.pop_front() else {
                return;
            };
            let buf = BUFFERS.with(|b| b.borrow_mut().get_mut(&self.device)?.pop_front());
            let Some((_, sg, done)) = buf else {
                let Some(poller) = st.poller.filter(|_| !popped && !POPPING.get()) else {
                    st.dropped = true;
                    continue;
                };
                // Pop the avail ring once, with the event back in front: the buffers
                // arrive through `buffer`, whose own flush may use them already.
                st.pending.push_front(event);
                drop(st);
                popped = true;
                POPPING.set(true);
                poller.pop_now();
                POPPING.set(false);
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
