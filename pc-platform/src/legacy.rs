//! The small ISA pieces a PC has to answer on: the i8042 (its reset pulse, and a
//! keyboard that acknowledges commands),
//! port 0x92 (fast reset, A20), the APM control port 0xB2 (ACPI enable), and ports
//! that only need to exist (8237 DMA, POST code 0x80, the ELCR at 0x4D0).

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::{EventSink, PlatformEvent};
use io_bus::BusDevice;

/// Ports that accept writes and read back 0xff (or what was last written, for
/// registers firmware reads back, like the ELCR).
pub struct Ignored {
    last: Mutex<Vec<u8>>,
}

impl Ignored {
    /// A range of `len` ports that remembers byte writes.
    pub fn new(len: usize) -> Ignored {
        Ignored {
            last: Mutex::new(vec![0; len]),
        }
    }
}

impl BusDevice for Ignored {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| last.get(o + i))
                .copied()
                .unwrap_or(0xff);
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (i, d) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset)
                .ok()
                .and_then(|o| last.get_mut(o + i))
            {
                *slot = *d;
            }
        }
    }
}

/// A minimal i8042 keyboard controller at 0x60 (data) and 0x64 (status/command), with
/// a PS/2 keyboard behind it that never has a key to send. The controller answers
/// self-test (0xAA), interface test (0xAB) and command-byte reads (0x20); command 0xFE
/// (pulse the reset line) resets the machine. The keyboard acknowledges its commands
/// as QEMU's `ps2_write_keyboard` does (reset: ACK then the BAT code 0xAA; get ID: ACK,
/// 0xAB, 0x83; LED, scan-set and typematic commands take one acknowledged parameter;
/// unknown bytes: RESEND), so SeaBIOS's keyboard set-up completes instead of waiting
/// out its one-second ACK timeout. No mouse is attached: bytes for the aux port get no
/// answer (SeaBIOS probes it only when a guest calls INT 15h/C2).
pub struct I8042 {
    state: Mutex<KbdState>,
    events: EventSink,
}

struct KbdState {
    /// Bytes waiting in the output buffer (controller replies and keyboard bytes).
    output: VecDeque<u8>,
    command_byte: u8,
    /// The controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    /// The keyboard command waiting for its parameter byte.
    kbd_pending: Option<u8>,
    /// The keyboard's scan code set (1 to 3).
    scan_set: u8,
}

/// i8042 data port.
pub const I8042_DATA: u16 = 0x60;
/// i8042 status/command port.
pub const I8042_COMMAND: u16 = 0x64;

/// What the output buffer holds at most (QEMU's PS/2 queue is 16 deep for commands).
const OUTPUT_DEPTH: usize = 16;

/// PS/2 keyboard replies.
mod reply {
    /// Acknowledge.
    pub(super) const ACK: u8 = 0xfa;
    /// Basic assurance test passed (after a reset).
    pub(super) const BAT_OK: u8 = 0xaa;
    /// Send the last byte again (what a keyboard says to an unknown command).
    pub(super) const RESEND: u8 = 0xfe;
    /// Echo.
    pub(super) const ECHO: u8 = 0xee;
}

impl KbdState {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.output.len() < OUTPUT_DEPTH {
                self.output.push_back(b);
            }
        }
    }

    /// A byte from the host to the keyboard (QEMU's `ps2_write_keyboard`).
    fn keyboard_write(&mut self, value: u8) {
        if let Some(command) = self.kbd_pending.take() {
            match command {
                // Scan code set: 0 asks which one.
                0xf0 if value == 0 => {
                    let set = self.scan_set;
                    self.push(&[reply::ACK, set]);
                }
                0xf0 if (1..=3).contains(&value) => {
                    self.scan_set = value;
                    self.push(&[reply::ACK]);
                }
                0xf0 => self.push(&[reply::ACK]),
                // LEDs, typematic rate: taken.
                _ => self.push(&[reply::ACK]),
            }
            return;
        }
        match value {
            // Set LEDs, scan code set, typematic rate: a parameter follows.
            0xed | 0xf0 | 0xf3 => {
                self.kbd_pending = Some(value);
                self.push(&[reply::ACK]);
            }
            0xee => self.push(&[reply::ECHO]),
            // Get ID: an MF2 keyboard.
            0xf2 => self.push(&[reply::ACK, 0xab, 0x83]),
            // Enable, reset and disable, set defaults.
            0xf4..=0xf6 => self.push(&[reply::ACK]),
            // Reset: acknowledge, then the self-test result.
            0xff => {
                self.scan_set = 2;
                self.push(&[reply::ACK, reply::BAT_OK]);
            }
            _ => self.push(&[reply::RESEND]),
        }
    }
}

impl I8042 {
    /// A controller reporting resets to `events`.
    pub fn new(events: EventSink) -> I8042 {
        I8042 {
            state: Mutex::new(KbdState {
                output: VecDeque::new(),
                command_byte: 0x61,
                pending: None,
                kbd_pending: None,
                scan_set: 2,
            }),
            events,
        }
    }

    /// Maps to both ports: the device sees its port as the offset from 0x60.
    fn port_read(&self, port: u16) -> u8 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match port {
            I8042_DATA => s.output.pop_front().unwrap_or(0),
            // System flag (bit 2), unlocked (bit 4); bit 0 set while a byte waits.
            _ => 0x14 | u8::from(!s.output.is_empty()),
        }
    }

    fn port_write(&self, port: u16, value: u8) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match port {
            I8042_COMMAND => match value {
                0x20 => {
                    let byte = s.command_byte;
                    s.push(&[byte]);
                }
                0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => s.pending = Some(value),
                0xaa => s.push(&[0x55]),
                0xab => s.push(&[0x00]),
                0xfe => {
                    drop(s);
                    (self.events)(PlatformEvent::Reset);
                }
                _ => {}
            },
            _ => match s.pending.take() {
                Some(0x60) => s.command_byte = value,
                // Output port: bit 0 low holds the CPU in reset.
                Some(0xd1) if value & 1 == 0 => {
                    drop(s);
                    (self.events)(PlatformEvent::Reset);
                }
                Some(_) => {}
                // No controller command waiting: the byte is for the keyboard.
                None => s.keyboard_write(value),
            },
        }
    }
}

/// The i8042 as seen from one of its two ports.
pub struct I8042Port {
    /// The controller.
    pub controller: std::sync::Arc<I8042>,
    /// Which port this mapping is.
    pub port: u16,
}

impl BusDevice for I8042Port {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = self.controller.port_read(self.port);
        }
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.controller.port_write(self.port, v);
        }
    }
}

/// Port 0x92, "system control port A": bit 0 resets the machine on a 0 to 1
/// transition, bit 1 is the A20 gate (kept, always enabled in fact).
pub struct Port92 {
    value: Mutex<u8>,
    events: EventSink,
}

impl Port92 {
    /// Reports resets to `events`.
    pub fn new(events: EventSink) -> Port92 {
        Port92 {
            value: Mutex::new(0x02),
            events,
        }
    }
}

impl BusDevice for Port92 {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = *self.value.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let old = *value;
        *value = v & !1;
        drop(value);
        if v & 1 != 0 && old & 1 == 0 {
            (self.events)(PlatformEvent::Reset);
        }
    }
}

/// The environment variable that maps [`PanicPort`]: a port number, decimal or `0x`
/// hex. Only whoever starts the VMM can set it (a guest cannot), and the VMM says on
/// stderr when it is mapped; it is in every build so that the release-built tests of CI
/// run the vCPU-panic checks.
pub const PANIC_PORT_ENV: &str = "VMM_TEST_PANIC_PORT";

/// A test hook: a write to this port panics the vCPU
/// thread that made it, standing in for a device bug, so tests can check that a vCPU
/// panic ends the VMM promptly with the message and a non-zero status (issue 14).
/// Mapped only when [`PANIC_PORT_ENV`] names a port.
pub struct PanicPort {
    /// The port, for the message.
    pub port: u16,
}

impl BusDevice for PanicPort {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        panic!(
            "test hook: the guest wrote {data:02x?} to port {:#x} ({PANIC_PORT_ENV})",
            self.port
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn sink() -> (EventSink, Arc<Mutex<Vec<PlatformEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        (Arc::new(move |e| log.lock().unwrap().push(e)), seen)
    }

    #[test]
    fn resets_from_the_keyboard_controller_and_port_92() {
        let (events, seen) = sink();
        let kbd = Arc::new(I8042::new(events.clone()));
        let status = I8042Port {
            controller: kbd.clone(),
            port: I8042_COMMAND,
        };
        let data = I8042Port {
            controller: kbd,
            port: I8042_DATA,
        };
        let mut b = [0];
        status.read(0, &mut b);
        assert_eq!(b[0] & 1, 0, "no data");
        status.write(0, &[0xaa]);
        data.read(0, &mut b);
        assert_eq!(b[0], 0x55);
        status.write(0, &[0xfe]);
        let p92 = Port92::new(events);
        p92.write(0, &[0x03]);
        assert_eq!(
            *seen.lock().unwrap(),
            [PlatformEvent::Reset, PlatformEvent::Reset]
        );
        let ignored = Ignored::new(2);
        ignored.write(1, &[0x0c]);
        ignored.read(0, &mut b);
        assert_eq!(b, [0]);
        let mut w = [0u8; 4];
        ignored.read(1, &mut w);
        assert_eq!(w, [0x0c, 0xff, 0xff, 0xff]);
    }

    /// SeaBIOS's `ps2_keyboard_setup` sequence: without the keyboard's ACKs it waited
    /// out a one-second timeout per boot ("WARNING - Timeout at ps2_recvbyte").
    #[test]
    fn keyboard_answers_seabios_setup_sequence() {
        let (events, _) = sink();
        let kbd = Arc::new(I8042::new(events));
        let status = I8042Port {
            controller: kbd.clone(),
            port: I8042_COMMAND,
        };
        let data = I8042Port {
            controller: kbd,
            port: I8042_DATA,
        };
        let drain = || {
            let mut out = Vec::new();
            let mut b = [0u8];
            loop {
                status.read(0, &mut b);
                if b[0] & 1 == 0 {
                    return out;
                }
                data.read(0, &mut b);
                out.push(b[0]);
            }
        };
        // Write the command byte (0x60 + data), then reset the keyboard.
        status.write(0, &[0x60]);
        data.write(0, &[0x30]);
        assert!(drain().is_empty());
        status.write(0, &[0x20]);
        assert_eq!(drain(), [0x30]);
        data.write(0, &[0xff]);
        assert_eq!(drain(), [0xfa, 0xaa]);
        data.write(0, &[0xf5]);
        assert_eq!(drain(), [0xfa]);
        data.write(0, &[0xf0]);
        assert_eq!(drain(), [0xfa]);
        data.write(0, &[0x02]);
        assert_eq!(drain(), [0xfa]);
        data.write(0, &[0xf0]);
        data.write(0, &[0x00]);
        assert_eq!(drain(), [0xfa, 0xfa, 0x02]);
        data.write(0, &[0xf4]);
        data.write(0, &[0xf2]);
        data.write(0, &[0xee]);
        data.write(0, &[0x42]);
        assert_eq!(drain(), [0xfa, 0xfa, 0xab, 0x83, 0xee, 0xfe]);
        // A byte for the mouse gets no answer; the buffer is bounded.
        status.write(0, &[0xd4]);
        data.write(0, &[0xff]);
        assert!(drain().is_empty());
        for _ in 0..20 {
            data.write(0, &[0xff]);
        }
        assert_eq!(drain().len(), OUTPUT_DEPTH);
    }
}
