//! Legacy interrupts (INTx): a function drives its pin through an [`IntxRouting`] (the
//! platform's router, the PIIX3's PIRQ registers on a PC), and the router drives the
//! interrupt controller's inputs through an [`IrqLine`] (the machine's irqchip: KVM's
//! `KVM_IRQ_LINE`). Neither side knows the other's implementation.

use std::sync::Arc;

/// Routes PCI INTx pins to the platform's interrupt lines. INTx is level-triggered and
/// shared: the router ORs every function asserting into one line.
pub trait IntxRouting: Send + Sync {
    /// Sets the level of `slot`'s interrupt pin `pin` (1 = INTA ..= 4 = INTD; other
    /// pins are ignored). An implementation decides and drives the resulting line
    /// level in one critical section, so racing callers leave the line at the level
    /// their final states call for.
    fn set_level(&self, slot: u8, pin: u8, level: bool);
}

/// How the machine drives an interrupt controller input (a KVM GSI).
pub trait IrqLine: Send + Sync {
    /// Sets the level of GSI `gsi`.
    fn set_level(&self, gsi: u32, level: bool);
}

/// The INTx line of the function at `slot` with interrupt pin `pin`, as a closure a
/// transport calls with the level its state calls for.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use pci::{IntxRouting, intx_line};
///
/// #[derive(Default)]
/// struct Log(Mutex<Vec<(u8, u8, bool)>>);
/// impl IntxRouting for Log {
///     fn set_level(&self, slot: u8, pin: u8, level: bool) {
///         self.0.lock().unwrap().push((slot, pin, level));
///     }
/// }
///
/// let router = Arc::new(Log::default());
/// let line = intx_line(router.clone(), 3, 1);
/// line(true);
/// line(false);
/// assert_eq!(*router.0.lock().unwrap(), [(3, 1, true), (3, 1, false)]);
/// ```
pub fn intx_line(
    router: Arc<dyn IntxRouting>,
    slot: u8,
    pin: u8,
) -> impl Fn(bool) + Send + Sync + 'static {
    move |level| router.set_level(slot, pin, level)
}
