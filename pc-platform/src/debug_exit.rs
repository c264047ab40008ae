//! QEMU's `isa-debug-exit`: a guest write of `value` ends the VM with exit status
//! `(value << 1) | 1` (so a guest can never exit with 0, which means "the VMM itself
//! was fine").

use io_bus::{BusDevice, le_value};

use crate::{EventSink, PlatformEvent};

/// The debug-exit port(s).
pub struct DebugExit {
    events: EventSink,
}

impl DebugExit {
    /// A device that reports exits to `events`.
    pub fn new(events: EventSink) -> DebugExit {
        DebugExit { events }
    }

    /// The exit status QEMU uses for `value`.
    pub fn status(value: u64) -> i32 {
        ((value << 1) | 1) as i32
    }
}

impl BusDevice for DebugExit {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        (self.events)(PlatformEvent::Exit(Self::status(le_value(data))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn status_is_value_shifted_with_bit0() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let dev = DebugExit::new(Arc::new(move |e| log.lock().unwrap().push(e)));
        dev.write(0, &[0x10]);
        dev.write(0, &0u32.to_le_bytes());
        assert_eq!(
            *seen.lock().unwrap(),
            [PlatformEvent::Exit(0x21), PlatformEvent::Exit(1)]
        );
    }
}
