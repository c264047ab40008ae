//! An RCU list with the semantics of QEMU's `rcu_queue.h`: readers walk forward without
//! locks while one writer at a time inserts and removes.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::ReadSide;

struct Node<T> {
    /// The next node; kept as it was when this node is removed, so that a reader standing
    /// on a removed node still reaches the rest of the list.
    next: AtomicPtr<Node<T>>,
    value: T,
}

/// A singly linked list that readers walk under a guard while writers mutate it.
///
/// - Readers go forward only, see each node fully initialised, and may see a node that is
///   being removed (and then continue from it to the nodes after it).
/// - Writers are serialized by an internal mutex ([`RcuList::write`] holds it across
///   several operations; the single-operation methods take it themselves). Predicates
///   passed to writer methods run under that mutex: writing to the same list from
///   inside one deadlocks.
/// - A removed node is unlinked at once and dropped after a grace period, on the
///   `call_rcu` thread.
///
/// ```
/// use rcu::RcuList;
///
/// let devices = RcuList::new();
/// devices.push_back("ide0");
/// devices.push_back("scsi0");
/// let guard = rcu::read();
/// let names: Vec<_> = devices.iter(&guard).copied().collect();
/// assert_eq!(names, ["ide0", "scsi0"]);
/// assert!(devices.remove_first(|d| *d == "ide0")); // `names` is unaffected
/// ```
pub struct RcuList<T> {
    head: AtomicPtr<Node<T>>,
    writer: Mutex<()>,
    _owns: PhantomData<Box<Node<T>>>,
}

// SAFETY: sending the list sends its `T`s; no reader can borrow a list being sent.
unsafe impl<T: Send> Send for RcuList<T> {}
// SAFETY: through `&RcuList` threads read `&T` concurrently (T: Sync) and move `T`s in and
// to the `call_rcu` thread (T: Send).
unsafe impl<T: Send + Sync> Sync for RcuList<T> {}

impl<T> RcuList<T> {
    /// An empty list.
    pub const fn new() -> RcuList<T> {
        RcuList {
            head: AtomicPtr::new(ptr::null_mut()),
            writer: Mutex::new(()),
            _owns: PhantomData,
        }
    }

    /// Walks the list front to back under `guard`.
    pub fn iter<'a, G: ReadSide>(&'a self, _guard: &'a G) -> Iter<'a, T> {
        // Acquire pairs with the Release that linked the first node.
        Iter {
            next: self.head.load(Ordering::Acquire),
            _list: PhantomData,
        }
    }

    /// The first element for which `pred` holds.
    pub fn find<'a, G: ReadSide>(
        &'a self,
        guard: &'a G,
        mut pred: impl FnMut(&T) -> bool,
    ) -> Option<&'a T> {
        self.iter(guard).find(|v| pred(v))
    }

    /// Whether the list has no element, as seen under `guard`.
    pub fn is_empty<G: ReadSide>(&self, guard: &G) -> bool {
        self.iter(guard).next().is_none()
    }
}

impl<T: Send + 'static> RcuList<T> {
    /// Locks out other writers until the returned writer is dropped, for a sequence of
    /// operations no other writer may interleave with.
    pub fn write(&self) -> ListWriter<'_, T> {
        ListWriter {
            list: self,
            _lock: self.writer.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Inserts `value` at the front.
    pub fn push_front(&self, value: T) {
        self.write().push_front(value);
    }

    /// Inserts `value` at the back.
    pub fn push_back(&self, value: T) {
        self.write().push_back(value);
    }

    /// Inserts `value` before the first element for which `pred` holds, or at the back.
    /// With `pred = |e| e.key < value.key` this keeps the list sorted, descending.
    pub fn insert_before(&self, value: T, pred: impl FnMut(&T) -> bool) {
        self.write().insert_before(value, pred);
    }

    /// Removes the first element for which `pred` holds; returns whether there was one.
    pub fn remove_first(&self, pred: impl FnMut(&T) -> bool) -> bool {
        self.write().remove_first(pred)
    }

    /// Removes every element for which `keep` is false; returns how many were removed.
    pub fn retain(&self, keep: impl FnMut(&T) -> bool) -> usize {
        self.write().retain(keep)
    }
}

/// Exclusive write access to an [`RcuList`]; readers are not excluded.
pub struct ListWriter<'a, T> {
    list: &'a RcuList<T>,
    _lock: MutexGuard<'a, ()>,
}

impl<T: Send + 'static> ListWriter<'_, T> {
    /// The link that points to the first node for which `pred` holds, or to null at the
    /// end. Writers need no guard: only writers unlink, and we are the only writer.
    fn link_where(&self, mut pred: impl FnMut(&T) -> bool) -> &AtomicPtr<Node<T>> {
        let mut link = &self.list.head;
        loop {
            let p = link.load(Ordering::Relaxed);
            // SAFETY: `p` is linked into the list, and linked nodes are freed only after
            // a writer (excluded by our lock) unlinks them.
            match unsafe { p.as_ref() } {
                Some(node) if !pred(&node.value) => link = &node.next,
                _ => return link,
            }
        }
    }

    fn link_in(link: &AtomicPtr<Node<T>>, value: T) {
        let next = link.load(Ordering::Relaxed);
        let node = Box::into_raw(Box::new(Node {
            next: AtomicPtr::new(next),
            value,
        }));
        // Release: a reader that loads `node` (Acquire) sees its value and next.
        link.store(node, Ordering::Release);
    }

    /// Inserts `value` at the front.
    pub fn push_front(&mut self, value: T) {
        Self::link_in(&self.list.head, value);
    }

    /// Inserts `value` at the back.
    pub fn push_back(&mut self, value: T) {
        let link = self.link_where(|_| false);
        Self::link_in(link, value);
    }

    /// Inserts `value` before the first element for which `pred` holds, or at the back.
    pub fn insert_before(&mut self, value: T, pred: impl FnMut(&T) -> bool) {
        let link = self.link_where(pred);
        Self::link_in(link, value);
    }

    /// Unlinks the node `link` points to (non-null) and drops it after a grace period.
    fn unlink(link: &AtomicPtr<Node<T>>) {
        let node = link.load(Ordering::Relaxed);
        // SAFETY: `node` is linked (non-null per the caller) and we are the only writer.
        let next = unsafe { (*node).next.load(Ordering::Relaxed) };
        // Readers that already loaded `node` keep walking through its unchanged `next`.
        // Release is not needed for `next`'s contents (already published), but keeps
        // the rule simple: every store of a link is Release.
        #[cfg(test)]
        crate::test_hooks::reached(crate::test_hooks::Point::BeforeUnlink);
        link.store(next, Ordering::Release);
        let node = Unlinked(node);
        crate::call_rcu(move || {
            let node = node;
            // SAFETY: unlinked above, by the one writer, so unreachable for readers that
            // start from now on; a grace period has passed, so the readers that could
            // still see it are gone. It came from Box::into_raw in `link_in`.
            drop(unsafe { Box::from_raw(node.0) });
        });
    }

    /// Removes the first element for which `pred` holds; returns whether there was one.
    pub fn remove_first(&mut self, pred: impl FnMut(&T) -> bool) -> bool {
        let link = self.link_where(pred);
        if link.load(Ordering::Relaxed).is_null() {
            return false;
        }
        Self::unlink(link);
        true
    }

    /// Removes every element for which `keep` is false; returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let mut removed = 0;
        let mut link = &self.list.head;
        loop {
            let p = link.load(Ordering::Relaxed);
            // SAFETY: as in `link_where`.
            let Some(node) = (unsafe { p.as_ref() }) else {
                return removed;
            };
            if keep(&node.value) {
                link = &node.next;
            } else {
                Self::unlink(link);
                removed += 1;
            }
        }
    }

    /// Walks the list; the writer's lock keeps every node alive while borrowed.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            next: self.list.head.load(Ordering::Relaxed),
            _list: PhantomData,
        }
    }
}

/// A node in transit to the `call_rcu` thread.
struct Unlinked<T>(*mut Node<T>);
// SAFETY: it is the unique owner of the unlinked node, and `T: Send`.
unsafe impl<T: Send> Send for Unlinked<T> {}

/// Iterator over an [`RcuList`], yielding references valid for the guard's borrow.
pub struct Iter<'a, T> {
    next: *const Node<T>,
    _list: PhantomData<&'a T>,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    #[inline]
    fn next(&mut self) -> Option<&'a T> {
        // SAFETY: `next` was loaded (Acquire) from a link while the guard (or the writer
        // lock) borrowed for 'a was held: a node reachable then is freed only after a
        // grace period that cannot end within 'a.
        let node = unsafe { self.next.as_ref()? };
        // Acquire pairs with the Release that linked the following node.
        self.next = node.next.load(Ordering::Acquire);
        Some(&node.value)
    }
}

impl<T> Drop for RcuList<T> {
    fn drop(&mut self) {
        let mut p = *self.head.get_mut();
        while !p.is_null() {
            // SAFETY: `&mut self`: no reader or writer borrows the list; linked nodes came
            // from Box::into_raw and are freed once (unlinked ones belong to call_rcu).
            let mut node = unsafe { Box::from_raw(p) };
            p = *node.next.get_mut();
        }
    }
}

impl<T> Default for RcuList<T> {
    fn default() -> Self {
        RcuList::new()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for RcuList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guard = crate::read();
        f.debug_list().entries(self.iter(&guard)).finish()
    }
}
