//! A virtio device model that serves nothing, for transport tests: it hands the test
//! the interrupt each started queue got, and holds each asynchronous reset open until
//! the test completes it (a device whose queues are still draining).

use std::sync::{Arc, Mutex};

use aio_context::IoThread;
use io_bus::BusDevice;
use pci::{PciFunction, Space};
use virtio_core::{QueueError, QueueSetup, VirtioDevice, VirtioInterrupt};
use virtio_pci::{IntxLine, MsiSender, VirtioPci};
use virtio_queue::Queue;

/// What the mock device shares with the test.
#[derive(Default)]
pub(crate) struct MockState {
    /// The interrupt of the last queue started.
    pub(crate) interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Resets not completed yet: call one to finish that reset.
    pub(crate) resets: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl MockState {
    /// The interrupt of the last queue started.
    pub(crate) fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt
            .lock()
            .unwrap()
            .clone()
            .expect("a queue started")
    }

    /// Finishes every reset still open; returns how many there were.
    pub(crate) fn complete_resets(&self) -> usize {
        let resets = std::mem::take(&mut *self.resets.lock().unwrap());
        let n = resets.len();
        for done in resets {
            done();
        }
        n
    }
}

struct MockDevice(Arc<MockState>);

impl VirtioDevice for MockDevice {
    fn device_type(&self) -> u32 {
        2
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn queue_max_size(&self) -> u16 {
        16
    }
    fn features(&self) -> u64 {
        1 << 32 // VERSION_1
    }
    fn ack_features(&mut self, _: u64) {}
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn start_queue(&mut self, _: u16, setup: QueueSetup) -> Result<(), QueueError> {
        *self.0.interrupt.lock().unwrap() = Some(setup.interrupt);
        Ok(())
    }
    fn stop_queue(&mut self, _: u16) -> Option<Queue> {
        None
    }
    fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.0.resets.lock().unwrap().push(done);
    }
}

struct NoMsi;
impl MsiSender for NoMsi {
    fn send(&self, _: u16, _: u64, _: u32) {}
}

/// Where the tests place BAR 4.
pub(crate) const BAR4: u64 = 0xfe00_0000;

/// A virtio-pci function over the mock device, MSI-X off, INTx on `intx`.
pub(crate) struct MockPci {
    pub(crate) pci: VirtioPci,
    /// BAR 4's handler (common config, ISR, notify).
    pub(crate) bar: Arc<dyn BusDevice>,
    pub(crate) state: Arc<MockState>,
}

impl MockPci {
    /// Builds the function with BAR 4 placed at [`BAR4`] and memory decoding on.
    pub(crate) fn new(intx: IntxLine) -> MockPci {
        let state = Arc::new(MockState::default());
        let pci = VirtioPci::new(
            "mock",
            Box::new(MockDevice(state.clone())),
            super::guest_ram(1 << 20),
            Arc::new(IoThread::spawn("mock-virtio").unwrap()),
            Arc::new(NoMsi),
            intx,
        )
        .unwrap();
        pci.config_write(0x10 + 4 * 4, &(BAR4 as u32).to_le_bytes());
        pci.config_write(0x10 + 4 * 5, &0u32.to_le_bytes());
        pci.config_write(0x04, &6u16.to_le_bytes());
        let bar = pci
            .mappings()
            .into_iter()
            .find(|m| m.space == Space::Mem && m.base == BAR4)
            .expect("BAR 4 decoded")
            .device;
        MockPci { pci, bar, state }
    }

    fn write(&self, offset: u64, value: u32, len: usize) {
        self.bar.write(offset, &value.to_le_bytes()[..len]);
    }

    /// The device status register.
    pub(crate) fn status(&self) -> u8 {
        let mut b = [0u8];
        self.bar.read(0x14, &mut b);
        b[0]
    }

    /// Writes the device status register (0: reset).
    pub(crate) fn set_status(&self, value: u8) {
        self.write(0x14, u32::from(value), 1);
    }

    /// Negotiates VERSION_1 and starts queue 0 (without writing 0 first); returns the
    /// status.
    pub(crate) fn bring_up(&self) -> u8 {
        self.set_status(3); // ACKNOWLEDGE | DRIVER
        self.write(0x08, 1, 4);
        self.write(0x0c, 1, 4); // VERSION_1
        self.set_status(3 | 8);
        self.write(0x16, 0, 2);
        for (off, addr) in [(0x20, 0x1000), (0x28, 0x2000), (0x30, 0x3000)] {
            self.write(off, addr, 4);
            self.write(off + 4, 0, 4);
        }
        self.write(0x1c, 1, 2);
        self.set_status(3 | 8 | 4);
        self.status()
    }

    /// Reads (and so clears) the ISR.
    pub(crate) fn read_isr(&self) -> u8 {
        let mut b = [0u8];
        self.bar.read(0x1000, &mut b);
        b[0]
    }
}
