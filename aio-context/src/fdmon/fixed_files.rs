//! io_uring's registered ("fixed") files, one table per ring.
//!
//! Every op on a plain descriptor looks the descriptor up in the process's file table
//! and takes a reference to the file for the op's lifetime (`fget`/`fput`, one atomic
//! pair per op, more when the table is shared between threads). A file registered with
//! the ring is looked up once, and an SQE with `IOSQE_FIXED_FILE` names it by its slot.
//!
//! What is registered is a [`crate::FixedFile`], on its first op on this ring. The
//! table holds only a weak reference to it: the weak reference keeps the allocation, so
//! its address (the lookup key) cannot be reused by another file while the entry
//! exists. The kernel's table holds its own reference to the open file, so a file
//! stays open in the kernel after its `FixedFile` is dropped until the slot is emptied:
//! dropping a `FixedFile` schedules [`FixedFiles::release_dead`] on every context that
//! registered it (and every registration empties dead slots first). An op in flight
//! on an emptied slot keeps the file: the kernel puts a replaced file only after the
//! ops that use it complete.
//!
//! Every failure (no sparse tables before Linux 5.13, a full table, `RLIMIT_NOFILE`
//! below the table's size) is remembered per file, logged once, and the op takes the
//! plain path: registration is an optimisation, never a requirement.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Weak};

use super::fixed::Table;
use crate::fixed_file::Shared;

/// Slots in the sparse table (the kernel checks it against `RLIMIT_NOFILE`, whose
/// usual soft limit is 1024).
const SLOTS: u32 = 256;

struct Entry {
    file: Weak<Shared>,
    slot: u32,
}

impl Entry {
    fn is_dead(&self) -> bool {
        self.file.strong_count() == 0
    }
}

/// The ring's table of registered files.
pub(crate) struct FixedFiles {
    table: Table,
    entries: Vec<Entry>,
    /// Files the kernel refused (weak: compared by address only, as `entries`).
    refused: Vec<Weak<Shared>>,
    /// Slots not in use.
    free: Vec<u32>,
}

impl Default for FixedFiles {
    fn default() -> Self {
        FixedFiles {
            table: Table::Untried,
            entries: Vec::new(),
            refused: Vec::new(),
            // Popped from the end: slot 0 first.
            free: (0..SLOTS).rev().collect(),
        }
    }
}

/// A file's slot, and whether this call registered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) index: u32,
    pub(crate) new: bool,
}

impl FixedFiles {
    /// `file`'s slot in this ring's table, registering it on its first use; `None`
    /// where the kernel refuses it.
    pub(crate) fn slot_for(
        &mut self,
        submitter: &io_uring::Submitter<'_>,
        file: &Arc<Shared>,
    ) -> Option<Slot> {
        let key = Arc::as_ptr(file);
        if let Some(e) = self.entries.iter().find(|e| Weak::as_ptr(&e.file) == key) {
            return Some(Slot {
                index: e.slot,
                new: false,
            });
        }
        if self.refused.iter().any(|w| Weak::as_ptr(w) == key) {
            return None;
        }
        self.refused.retain(|w| w.strong_count() > 0);
        match self.register(submitter, file) {
            Ok(index) => Some(Slot { index, new: true }),
            Err(e) => {
                tracing::warn!(
                    "aio-context: io_uring file registration of fd {} refused ({e}); \
                     its ops look the descriptor up per op",
                    file.file.as_raw_fd()
                );
                self.refused.push(Arc::downgrade(file));
                None
            }
        }
    }

    fn register(
        &mut self,
        submitter: &io_uring::Submitter<'_>,
        file: &Arc<Shared>,
    ) -> io::Result<u32> {
        self.table
            .ensure(|| submitter.register_files_sparse(SLOTS))?;
        self.release_dead(submitter);
        let slot = self
            .free
            .pop()
            .ok_or_else(|| io::Error::other("the table of registered files is full"))?;
        let fd: RawFd = file.file.as_raw_fd();
        // The kernel takes its own reference to the open file: `file` is alive (borrowed
        // here), so `fd` is its descriptor and nobody else's.
        if let Err(e) = submitter.register_files_update(slot, &[fd]) {
            self.free.push(slot);
            return Err(e);
        }
        self.entries.push(Entry {
            file: Arc::downgrade(file),
            slot,
        });
        Ok(slot)
    }

    /// Empties the slots of files whose [`crate::FixedFile`] is gone (the kernel then
    /// closes them once no op uses them).
    pub(crate) fn release_dead(&mut self, submitter: &io_uring::Submitter<'_>) {
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if !e.is_dead() {
                i += 1;
                continue;
            }
            // -1: an empty slot.
            if submitter.register_files_update(e.slot, &[-1]).is_err() {
                // Still registered: keep the entry (its weak reference keeps the
                // address from being reused) and try again at the next sweep.
                i += 1;
                continue;
            }
            self.free.push(e.slot);
            self.entries.swap_remove(i);
        }
    }

    /// How many files are registered (dead ones not yet released included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
