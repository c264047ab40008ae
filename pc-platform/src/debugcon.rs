//! QEMU's `isa-debugcon`: a port that copies every byte the guest writes to a file and
//! reads back 0xe9, the value firmware probes for before it logs there. SeaBIOS's
//! Debian build logs to port 0x402 (QEMU: `-debugcon file:PATH -global
//! isa-debugcon.iobase=0x402`); here `VMM_DEBUGCON=PATH` maps one at 0x402, for
//! debugging and boot-time analysis (it is not part of the default machine: every
//! logged byte is a vCPU exit).

use std::io::Write;
use std::sync::Mutex;

use io_bus::BusDevice;

/// The port SeaBIOS logs to.
pub const DEBUGCON_PORT: u16 = 0x402;

/// What a read of the port returns (QEMU's `readback` default).
pub const READBACK: u8 = 0xe9;

/// The environment variable that names the log file.
pub const ENV: &str = "VMM_DEBUGCON";

/// A debug console writing to `out` (unbuffered: each guest write is one `write`, so
/// a reader of a FIFO sees the bytes when the guest wrote them).
pub struct DebugCon {
    out: Mutex<Box<dyn Write + Send>>,
}

impl DebugCon {
    /// A console that writes to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> DebugCon {
        DebugCon {
            out: Mutex::new(out),
        }
    }
}

impl BusDevice for DebugCon {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(READBACK);
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        // Only the low byte of a wider write is a character, as in QEMU.
        if let Some(&byte) = data.first() {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = out.write_all(&[byte]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copies_low_bytes_and_reads_back_e9() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let con = DebugCon::new(Box::new(Shared(log.clone())));
        con.write(0, b"h");
        con.write(0, &u16::from_le_bytes(*b"iX").to_le_bytes());
        let mut b = [0u8; 2];
        con.read(0, &mut b);
        assert_eq!(b, [READBACK; 2]);
        assert_eq!(*log.lock().unwrap(), b"hi");
    }
}
