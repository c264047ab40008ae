//! An RCU-protected pointer: readers load it under a guard, writers replace it and the old
//! value is reclaimed after a grace period.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::ReadSide;

/// A published value (or none) that readers load without locks and writers replace.
///
/// A loaded reference borrows both the cell and the guard, so it cannot outlive either;
/// a replaced value is dropped on the `call_rcu` thread after a grace period, when no
/// reader can still hold it. Writers do not exclude each other: concurrent `replace`
/// calls are each atomic, and the last one wins.
///
/// ```
/// use rcu::RcuCell;
///
/// let config = RcuCell::new(vec![1, 2, 3]);
/// {
///     let guard = rcu::read();
///     let v = config.load(&guard).unwrap();
///     config.replace(vec![4]); // `v` stays valid: its drop waits for `guard`
///     assert_eq!(v, &[1, 2, 3]);
/// }
/// assert_eq!(config.load(&rcu::read()), Some(&vec![4]));
/// ```
pub struct RcuCell<T> {
    ptr: AtomicPtr<T>,
    /// The cell owns a `T` (for drop check and auto traits; see the impls below).
    _owns: PhantomData<Box<T>>,
}

// SAFETY: sending the cell sends the owned `T` (T: Send). Readers on other threads may
// still hold `&T` obtained under their guards only while they also borrow the cell, so a
// cell that can be sent has no outstanding borrows.
unsafe impl<T: Send> Send for RcuCell<T> {}
// SAFETY: through `&RcuCell` a thread gets `&T` (needs T: Sync) and moves values in and
// out for dropping on the `call_rcu` thread (needs T: Send).
unsafe impl<T: Send + Sync> Sync for RcuCell<T> {}

impl<T> RcuCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> RcuCell<T> {
        RcuCell {
            ptr: AtomicPtr::new(Box::into_raw(Box::new(value))),
            _owns: PhantomData,
        }
    }

    /// A cell holding nothing.
    pub const fn empty() -> RcuCell<T> {
        RcuCell {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// The current value, valid for as long as both the cell and the guard are borrowed.
    #[inline]
    pub fn load<'a, G: ReadSide>(&'a self, _guard: &'a G) -> Option<&'a T> {
        // Acquire pairs with the Release of `new`/`replace`: the value is initialised.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from Box::into_raw. It is freed either by
        // `Drop` (which needs `&mut self`, excluded by the borrow of `self`) or, once
        // unpublished, after a grace period, which cannot end while `_guard` (borrowed
        // for 'a) keeps this thread in a read section.
        unsafe { p.as_ref() }
    }

    /// Exclusive access to the value: no reader can hold a reference while `&mut self`
    /// exists.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        // SAFETY: as in `load`; `&mut self` also rules out concurrent replacement.
        unsafe { self.ptr.get_mut().as_mut() }
    }

    /// The value, taking it out of the cell.
    pub fn into_inner(mut self) -> Option<T> {
        let p = std::mem::replace(self.ptr.get_mut(), ptr::null_mut());
        // SAFETY: we own the cell, so no reader holds a reference; `p` came from
        // Box::into_raw and the cell no longer points to it.
        (!p.is_null()).then(|| *unsafe { Box::from_raw(p) })
    }
}

impl<T: Send + 'static> RcuCell<T> {
    /// Publishes `value`; the previous value is dropped after a grace period.
    pub fn replace(&self, value: T) {
        self.swap(Box::into_raw(Box::new(value)));
    }

    /// Unpublishes the value; it is dropped after a grace period.
    pub fn clear(&self) {
        self.swap(ptr::null_mut());
    }

    fn swap(&self, new: *mut T) {
        // AcqRel: Release publishes `new`; Acquire orders the old value's creation
        // before its deferred drop.
        let old = self.ptr.swap(new, Ordering::AcqRel);
        if !old.is_null() {
            let old = OwnedPtr(old);
            crate::call_rcu(move || {
                let old = old;
                // SAFETY: `old` came from Box::into_raw, was unpublished by the swap above
                // (only one swap can return it), and a grace period has passed since,
                // so no reader still holds a reference to it.
                drop(unsafe { Box::from_raw(old.0) });
            });
        }
    }
}

/// An unpublished `Box<T>` in transit to the `call_rcu` thread.
struct OwnedPtr<T>(*mut T);
// SAFETY: it is the unique owner of a `Box<T>`, and `T: Send`.
unsafe impl<T: Send> Send for OwnedPtr<T> {}

impl<T> Drop for RcuCell<T> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: `&mut self`: no reader borrows the cell, so none holds the value.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<T> Default for RcuCell<T> {
    fn default() -> Self {
        RcuCell::empty()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guard = crate::read();
        f.debug_tuple("RcuCell").field(&self.load(&guard)).finish()
    }
}
