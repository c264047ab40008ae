//! The PC platform devices SeaBIOS and Linux expect, QEMU-compatible: the i440FX and
//! PIIX function models (on the `pci` crate's host bridge), CMOS/RTC, fw_cfg, the 16550
//! on COM1, the reset and power-off paths, isa-debug-exit, and the ports that only need
//! to exist.
//!
//! The legacy devices are children of the PIIX3's ISA bus ([`isa`]) in the qdev tree,
//! so they are found and walked like PCI functions; their ports are dispatched through
//! the port [`IoBus`](io_bus::IoBus).
//!
//! Each model is a state machine behind its own lock, reached through
//! [`BusDevice`](io_bus::BusDevice) from vCPU threads; none starts a thread of its own
//! (the machine's stdin reader feeds the UART through `SerialPort::input`). Where a model
//! restarts or ends the machine it calls the [`EventSink`] the machine gave it with a
//! [`PlatformEvent`]; interrupts go through the `pci` crate's [`IrqLine`](pci::IrqLine)
//! or an eventfd the machine registered as an irqfd. Guest input they parse, and what
//! they check:
//!
//! | device | guest input | bounds checked |
//! | --- | --- | --- |
//! | CMOS | index register | index masked to 0..128 |
//! | fw_cfg | selector, data reads, DMA descriptors | unknown keys read as empty, reads past the end return 0; DMA descriptor and buffers translated through the RAM list with overflow checks, ERROR on anything outside RAM, no allocation from guest lengths (see `fw_cfg`'s table) |
//! | debugcon (`VMM_DEBUGCON` only) | written bytes | the low byte is copied to the log file |
//! | debug exit | written value | any value; the exit status is `(value << 1) \| 1` truncated to a byte by the OS |
//! | serial | UART registers | vm-superio's 16550 model |
//! | PIIX3 PIRQ routing | PIRQA..D registers | IRQs above 15 and reserved ones disable the route |
//! | PM1 / APM ports | PM1a control, APM command | only SLP_EN with S5 powers off |
//!
//! (PCI config space and BAR checks are the `pci` crate's.)
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use io_bus::BusDevice;
//! use pc_platform::debug_exit::DebugExit;
//! use pc_platform::{EventSink, PlatformEvent};
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let events: EventSink = Arc::new(move |e| log.lock().unwrap().push(e));
//! let exit = DebugExit::new(events);
//! exit.write(0, &[0x10]);
//! assert_eq!(*seen.lock().unwrap(), [PlatformEvent::Exit(0x21)]);
//! ```
#![deny(missing_docs)]

pub mod cmos;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod isa;
pub mod legacy;
pub mod piix;
pub mod serial;

use std::sync::Arc;

pub use piix::{
    ApmControl, I440fxHost, IntxRouter, PM_IO_LEN, PamListener, Piix3Isa, Piix4Pm, PmRegisters,
    PmState,
};

/// What a platform device asks of the machine: the guest restarts or ends it. The
/// machine handles it on its main thread, never inside the vCPU exit that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformEvent {
    /// A guest-initiated reset (0xCF9, port 0x92, the i8042 pulse).
    Reset,
    /// A guest-initiated power-off (ACPI S5).
    Shutdown,
    /// isa-debug-exit: end the process with this status, as QEMU does.
    Exit(i32),
}

/// Where devices send [`PlatformEvent`]s (the machine's event queue).
pub type EventSink = Arc<dyn Fn(PlatformEvent) + Send + Sync>;

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
