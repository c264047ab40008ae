//! The PC platform devices SeaBIOS and Linux expect, QEMU-compatible: the i440FX and
//! PIIX function models (on the `pci` crate's host bridge), CMOS/RTC, fw_cfg, the 16550
//! on COM1, the reset and power-off paths, isa-debug-exit, and the ports that only need
//! to exist.
//!
//! Each model is a state machine behind its own lock, reached through
//! [`BusDevice`](io_bus::BusDevice) from vCPU threads. Guest input they parse,
//! and what they check:
//!
//! | device | guest input | bounds checked |
//! | --- | --- | --- |
//! | PCI config (0xCF8/0xCFC) | address register, config offset and width | bus/slot/function exist, offset < 256, access inside the dword |
//! | PCI BARs | written BAR values, command register | size-aligned, below the top of the space, no overlap (else unmapped) |
//! | CMOS | index register | index masked to 0..128 |
//! | fw_cfg | selector, data reads, DMA descriptors | unknown keys read as empty, reads past the end return 0; DMA descriptor and buffers translated through the RAM list with overflow checks, ERROR on anything outside RAM, no allocation from guest lengths (see `fw_cfg`'s table) |
//! | debugcon (`VMM_DEBUGCON` only) | written bytes | the low byte is copied to the log file |
//! | debug exit | written value | any value; the exit status is `(value << 1) \| 1` truncated to a byte by the OS |
//! | serial | UART registers | vm-superio's 16550 model |

pub mod cmos;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod legacy;
pub mod pci;
pub mod serial;

use std::sync::Arc;

/// What a device asks of the machine (handled on the main thread, never inside the
/// vCPU exit that caused it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// A guest-initiated reset (0xCF9, port 0x92, the i8042 pulse, a triple fault).
    Reset,
    /// A guest-initiated power-off (ACPI S5).
    Shutdown,
    /// isa-debug-exit: end the process with this status, as QEMU does.
    Exit(i32),
    /// The guest made the machine unusable (a vCPU failed); the message says how.
    InternalError(String),
    /// The VMM itself failed (a vCPU thread panicked): the process ends with status 1
    /// after printing the message, monitor or not.
    Fatal(String),
}

/// Where devices send [`SystemEvent`]s.
pub type EventSink = Arc<dyn Fn(SystemEvent) + Send + Sync>;
