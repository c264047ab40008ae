//! COM1: vm-superio's 16550 at 0x3F8, interrupting on IRQ 4 through an irqfd. Its
//! output goes through a bounded buffer that the main loop drains ([`SerialOutput`]): a vCPU
//! never waits for stdout.

mod output;

pub use output::{ConsoleWriter, OUTPUT_BUFFER_BYTES, SerialOutput};

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use io_bus::BusDevice;

/// COM1's first port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt: an eventfd the machine registers as an irqfd for
/// IRQ 4 (an edge into the in-kernel PIC and IOAPIC).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's output goes: the console (stdout, written by the main loop as
/// soon as it can, so a test reading our stdout sees each line as the guest prints
/// it), nowhere, or a test's buffer. Writing never waits.
pub enum SerialOut {
    /// The process's stdout, through the main loop.
    Console(Arc<SerialOutput>),
    /// Discarded.
    Sink,
    /// A shared buffer (tests).
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SerialOut::Console(out) => out.push(buf),
            SerialOut::Sink => {}
            SerialOut::Buffer(b) => b.lock().unwrap_or_else(|e| e.into_inner()).extend(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART as a port device.
pub struct SerialPort {
    uart: Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>>,
}

impl SerialPort {
    /// A UART that interrupts through `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> SerialPort {
        SerialPort {
            uart: Mutex::new(Serial::new(IrqTrigger(irq), out)),
        }
    }

    fn uart(
        &self,
    ) -> std::sync::MutexGuard<'_, Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>>
    {
        self.uart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds host input to the guest; returns how many bytes fit in the receive FIFO
    /// (the machine's stdin reader retries the rest).
    pub fn input(&self, bytes: &[u8]) -> usize {
        self.uart().enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialPort {
    fn read(&self, offset: u64, data: &mut [u8]) {
        // Wider accesses read the first register and zeros (the UART is byte wide).
        data.fill(0);
        if let (Ok(offset @ 0..=7), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart().read(offset);
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if let (Ok(offset @ 0..=7), Some(&value)) = (u8::try_from(offset), data.first()) {
            // An error is the irqfd write failing: nothing the guest can do about it.
            let _ = self.uart().write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmit_reaches_the_output() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let port = SerialPort::new(EventFd::new(0).unwrap(), SerialOut::Buffer(buf.clone()));
        for b in b"hi" {
            port.write(0, &[*b]);
        }
        port.write(8, b"x"); // out of range: ignored
        assert_eq!(&*buf.lock().unwrap(), b"hi");
        let mut lsr = [0u8];
        port.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
