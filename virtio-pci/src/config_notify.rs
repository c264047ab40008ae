//! The configuration-change interrupt raised from outside the device model: a
//! `block_resize` changed virtio-blk's capacity, and the owner that heard of it (the
//! VMM, through the node's resize listener) tells the driver.
//!
//! As QEMU's `virtio_notify_config`: nothing before the driver set `DRIVER_OK`; else
//! `config_generation` moves (a driver reading a multi-byte field again sees that it
//! changed under it) and the config vector fires (MSI-X) or ISR bit 1 is set with INTx
//! raised.

use std::sync::Weak;

use crate::{DRIVER_OK, Shared, VirtioPci, lock};

/// Raises a function's config-change interrupt; cheap to clone, callable from any
/// thread. Does nothing once the function is gone.
#[derive(Clone)]
pub struct ConfigNotifier(Weak<Shared>);

impl std::fmt::Debug for ConfigNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigNotifier").finish_non_exhaustive()
    }
}

impl ConfigNotifier {
    /// Tells the driver that the device's configuration changed. Returns whether an
    /// interrupt was raised (false before `DRIVER_OK`, or with the function gone).
    pub fn notify(&self) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        // Lock order: transport, then the interrupts' MSI-X lock (as common_write).
        let mut t = lock(&shared.transport);
        if t.status & DRIVER_OK == 0 {
            return false;
        }
        t.config_generation = t.config_generation.wrapping_add(1);
        let epoch = lock(&shared.irq.msix).epoch;
        shared.irq.signal(epoch, |m| m.config_vector, 2);
        true
    }
}

impl VirtioPci {
    /// The handle that raises this function's config-change interrupt.
    pub fn config_notifier(&self) -> ConfigNotifier {
        ConfigNotifier(std::sync::Arc::downgrade(&self.shared))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use aio_context::IoThread;
    use io_bus::BusDevice;
    use ram_block::RamList;
    use virtio_core::{QueueError, QueueSetup, VirtioDevice};
    use virtio_queue::Queue;

    use crate::{COMMON, ISR, MsiSender, VirtioBar, VirtioPci};

    struct Nothing;

    impl VirtioDevice for Nothing {
        fn device_type(&self) -> u32 {
            2
        }
        fn num_queues(&self) -> u16 {
            1
        }
        fn queue_max_size(&self) -> u16 {
            8
        }
        fn features(&self) -> u64 {
            1 << 32
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn start_queue(&mut self, index: u16, _setup: QueueSetup) -> Result<(), QueueError> {
            Err(QueueError::NoSuchQueue(index))
        }
        fn stop_queue(&mut self, _index: u16) -> Option<Queue> {
            None
        }
    }

    #[derive(Default)]
    struct Msis(Mutex<Vec<u16>>);

    impl MsiSender for Msis {
        fn send(&self, vector: u16, _address: u64, _data: u32) {
            self.0.lock().unwrap().push(vector);
        }
    }

    fn generation(bar: &VirtioBar) -> u8 {
        let mut b = [0u8; 1];
        bar.read(COMMON + 0x15, &mut b);
        b[0]
    }

    #[test]
    fn a_config_change_sets_isr_bit_1_raises_intx_and_moves_the_generation() {
        let line = Arc::new(AtomicBool::new(false));
        let l = line.clone();
        let pci = VirtioPci::new(
            "vblk",
            Box::new(Nothing),
            RamList::new(),
            Arc::new(IoThread::spawn("cfg-test").unwrap()),
            Arc::new(Msis::default()),
            Arc::new(move |level| l.store(level, Ordering::SeqCst)),
        )
        .unwrap();
        let notifier = pci.config_notifier();
        let bar = VirtioBar(pci.shared.clone());

        // Before DRIVER_OK: nothing (QEMU's virtio_notify_config).
        assert!(!notifier.notify());
        assert!(!line.load(Ordering::SeqCst));
        assert_eq!(generation(&bar), 0);

        crate::lock(&pci.shared.transport).status = crate::DRIVER_OK;
        assert!(notifier.notify());
        assert!(line.load(Ordering::SeqCst), "INTx raised");
        assert_eq!(generation(&bar), 1);
        let mut isr = [0u8; 1];
        bar.read(ISR, &mut isr);
        assert_eq!(isr[0], 2, "ISR bit 1: configuration change");
        assert!(!line.load(Ordering::SeqCst), "the ISR read lowers INTx");

        drop(bar);
        drop(pci);
        assert!(
            !notifier.notify(),
            "a notifier outliving its function does nothing"
        );
    }
}
