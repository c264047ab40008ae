//! Read sections of every flavour, for walks that cross buses of different types.
//!
//! `rcu`'s lists take any guard through a generic parameter, but a tree walk goes through
//! `dyn AnyBus` (buses of different address and device types), whose methods cannot be
//! generic. So the guard travels as [`Section`], an enum of references to the three guard
//! types: a match per bus, no allocation, and the caller's flavour (memb on vCPU threads,
//! QSBR on iothreads) is preserved.

use rcu::{Guard, MbGuard, QsbrGuard, RcuCell, RcuList};

/// A read-side critical section this crate accepts: [`rcu::Guard`] (`rcu::read()`),
/// [`rcu::MbGuard`] (`rcu::read_mb()`) or [`rcu::QsbrGuard`] (`QsbrThread::read()`).
/// Sealed. References obtained under it borrow it, so they cannot outlive it.
pub trait ReadGuard: rcu::ReadSide + sealed::AsSection {}

impl ReadGuard for Guard {}
impl ReadGuard for MbGuard {}
impl ReadGuard for QsbrGuard<'_> {}

pub(crate) mod sealed {
    use super::*;

    /// Erases a guard's type, keeping its borrow.
    pub trait AsSection {
        /// This guard as a [`Section`].
        fn section(&self) -> Section<'_>;
    }

    impl AsSection for Guard {
        fn section(&self) -> Section<'_> {
            Section::Memb(self)
        }
    }
    impl AsSection for MbGuard {
        fn section(&self) -> Section<'_> {
            Section::Mb(self)
        }
    }
    impl AsSection for QsbrGuard<'_> {
        fn section(&self) -> Section<'_> {
            Section::Qsbr(self)
        }
    }

    /// A borrowed read guard of any flavour; proof of a read section for `'g`.
    #[derive(Clone, Copy, Debug)]
    pub enum Section<'g> {
        /// `rcu::read()`.
        Memb(&'g Guard),
        /// `rcu::read_mb()`.
        Mb(&'g MbGuard),
        /// `QsbrThread::read()`.
        Qsbr(&'g QsbrGuard<'g>),
    }

    impl<'g> Section<'g> {
        /// Walks `list` under this section.
        #[inline]
        pub fn iter<T>(self, list: &'g RcuList<T>) -> rcu::Iter<'g, T> {
            match self {
                Section::Memb(g) => list.iter(g),
                Section::Mb(g) => list.iter(g),
                Section::Qsbr(g) => list.iter(g),
            }
        }

        /// Loads `cell` under this section.
        #[inline]
        pub fn load<T>(self, cell: &'g RcuCell<T>) -> Option<&'g T> {
            match self {
                Section::Memb(g) => cell.load(g),
                Section::Mb(g) => cell.load(g),
                Section::Qsbr(g) => cell.load(g),
            }
        }
    }
}

pub(crate) use sealed::Section;
