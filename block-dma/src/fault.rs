//! [`FaultInjector`]: a backend wrapper that fails chosen requests (QEMU's `blkdebug`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aio_context::AioContext;
use io_uring::opcode;

use crate::Errno;
use crate::backend::{BackendInfo, BlockBackend, BlockOp, Done, OpKind, Ticket};

/// Which requests fail, and how.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// Only this kind of operation (`None`: any).
    pub kind: Option<OpKind>,
    /// Only operations overlapping this byte range `(offset, len)` (`None`: any).
    pub range: Option<(u64, u64)>,
    /// The error to complete with.
    pub errno: Errno,
    /// Let this many matching requests through first.
    pub skip: u32,
    /// Fail this many matching requests, then retire (`None`: forever).
    pub count: Option<u32>,
}

impl FaultRule {
    /// Fails every `kind` request (any kind if `None`) with `errno`.
    pub fn new(kind: Option<OpKind>, errno: Errno) -> FaultRule {
        FaultRule {
            kind,
            range: None,
            errno,
            skip: 0,
            count: None,
        }
    }

    /// Only requests overlapping `[offset, offset + len)`.
    pub fn range(mut self, offset: u64, len: u64) -> Self {
        self.range = Some((offset, len));
        self
    }

    /// Fails `count` requests, then retires.
    pub fn times(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// Lets the first `skip` matching requests through.
    pub fn after(mut self, skip: u32) -> Self {
        self.skip = skip;
        self
    }

    fn matches(&self, op: &BlockOp) -> bool {
        if self.kind.is_some_and(|k| k != op.kind()) {
            return false;
        }
        match (self.range, op.range()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((ro, rl)), Some((o, l))) => {
                o < ro.saturating_add(rl) && ro < o.saturating_add(l.max(1))
            }
        }
    }
}

/// Wraps a backend and fails the requests that match its rules; the others pass
/// through. An injected failure completes asynchronously, in the submitting context
/// (through an io_uring NOP), exactly like a real one.
pub struct FaultInjector<B> {
    inner: B,
    rules: Mutex<Vec<FaultRule>>,
    injected: AtomicU64,
}

impl<B: BlockBackend> FaultInjector<B> {
    /// No rules yet: everything passes.
    pub fn new(inner: B) -> FaultInjector<B> {
        FaultInjector {
            inner,
            rules: Mutex::new(Vec::new()),
            injected: AtomicU64::new(0),
        }
    }

    /// Adds a rule (rules are tried in order; the first that fires wins).
    pub fn inject(&self, rule: FaultRule) {
        self.lock().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Requests failed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error to inject for `op`, consuming one use of the rule that fires.
    fn fire(&self, op: &BlockOp) -> Option<Errno> {
        let mut rules = self.lock();
        let index = rules.iter_mut().position(|r| {
            if !r.matches(op) {
                return false;
            }
            if r.count == Some(0) {
                return false; // `times(0)`: never fires
            }
            if r.skip > 0 {
                r.skip -= 1;
                return false;
            }
            true
        })?;
        let rule = &mut rules[index];
        let errno = rule.errno;
        if let Some(count) = &mut rule.count {
            *count = count.saturating_sub(1);
            if *count == 0 {
                rules.remove(index);
            }
        }
        Some(errno)
    }
}

impl<B: BlockBackend> BlockBackend for FaultInjector<B> {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    fn submit(&self, ctx: &AioContext, op: BlockOp, done: Done) -> Result<Ticket, Errno> {
        let Some(errno) = self.fire(&op) else {
            return self.inner.submit(ctx, op, done);
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        let bufs = op.into_bufs();
        let complete = move |_res: i32| done(Err(errno), bufs);
        // SAFETY: a NOP references no memory.
        unsafe { ctx.submit(opcode::Nop::new().build(), complete) }
            .map(Ticket::Uring)
            .map_err(|e| Errno::from_io(&e))
    }

    fn cancel(&self, ctx: &AioContext, ticket: Ticket) {
        self.inner.cancel(ctx, ticket);
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn resize(&self, size: u64) -> Result<(), Errno> {
        self.inner.resize(size)
    }
}
