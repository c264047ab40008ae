//! Context-local state reachable from `Send` callbacks.
//!
//! A BH callback must be `Send` (any thread may schedule it, and the BH may be dropped
//! anywhere), but a DMA request's state lives in its `AioContext` and is not `Send`.
//! The callback therefore captures a [`Token`], and the state sits in a thread-local
//! table of the context's thread: the BH only ever runs there (invariant 1), and a token
//! that reaches any other thread, or outlives its entry, finds nothing.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use slab::Slab;

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table { slots: Slab::new(), next: 1 });
}

struct Table {
    slots: Slab<(u64, Rc<dyn Any>)>,
    next: u64,
}

/// Names an entry of the current thread's table; `Send`, `Copy` and inert elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    key: usize,
    generation: u64,
}

/// Stores `value` in this thread's table.
pub(crate) fn insert<T: 'static>(value: Rc<T>) -> Token {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let generation = t.next;
        t.next += 1;
        let key = t.slots.insert((generation, value as Rc<dyn Any>));
        Token { key, generation }
    })
}

/// The entry `token` names, if it is this thread's and still there.
pub(crate) fn get<T: 'static>(token: Token) -> Option<Rc<T>> {
    TABLE.with(|t| {
        let t = t.borrow();
        let (generation, value) = t.slots.get(token.key)?;
        if *generation != token.generation {
            return None;
        }
        value.clone().downcast::<T>().ok()
    })
}

/// Removes the entry (no-op if it is gone). The value is dropped after the table is
/// released, so its destructor may use the table.
pub(crate) fn remove(token: Token) {
    let removed = TABLE.with(|t| {
        let mut t = t.borrow_mut();
        match t.slots.get(token.key) {
            Some((generation, _)) if *generation == token.generation => {
                Some(t.slots.remove(token.key))
            }
            _ => None,
        }
    });
    drop(removed);
}

/// Runs `f` from `ctx`'s event loop at its next poll (never inline): how completions
/// that are known at once (a cancel while waiting, a failed submit) are delivered.
pub(crate) fn defer(ctx: &aio_context::AioContext, f: impl FnOnce() + 'static) {
    // The task is detached: dropping its join handle does not cancel it.
    drop(ctx.spawn(async move { f() }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_find_their_entry_once_and_only_on_their_thread() {
        let token = insert(Rc::new(41u32));
        assert_eq!(get::<u32>(token).as_deref(), Some(&41));
        assert!(get::<String>(token).is_none(), "wrong type");
        std::thread::spawn(move || assert!(get::<u32>(token).is_none(), "other thread"))
            .join()
            .unwrap();
        remove(token);
        assert!(get::<u32>(token).is_none());
        remove(token); // idempotent
        // A reused slot gets a new generation: the old token stays dead.
        let other = insert(Rc::new(5u32));
        assert!(get::<u32>(token).is_none());
        assert_eq!(get::<u32>(other).as_deref(), Some(&5));
        remove(other);
    }
}
