//! Parameter changes of a LUN (`VIRTIO_SCSI_F_CHANGE`): a `block_resize` of a scsi-hd's
//! image. The owner that heard of the resize sets the disk's new capacity
//! ([`scsi::HdControl::set_capacity`], which also raises the unit attention 2A/09) and
//! tells the driver through this notifier: a `VIRTIO_SCSI_T_PARAM_CHANGE` event with
//! the sense code, if the driver accepted `VIRTIO_SCSI_F_CHANGE` (QEMU's
//! `virtio_scsi_change`). Without the feature the unit attention alone reaches the
//! driver, at its next command to the LUN.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use scsi::Sense;

use crate::events::Events;
use crate::wire::Event;

/// Sends PARAM_CHANGE events to the driver; cheap to clone, callable from any thread.
#[derive(Clone)]
pub struct ChangeNotifier {
    pub(crate) events: Arc<Events>,
    /// Set while the driver has `VIRTIO_SCSI_F_CHANGE` acked.
    pub(crate) acked: Arc<AtomicBool>,
}

impl std::fmt::Debug for ChangeNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeNotifier")
            .field("acked", &self.acked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ChangeNotifier {
    /// Tells the driver that LUN `lun` of `target` changed as `sense` says (its ASC
    /// and ASCQ travel in the event). Returns whether an event was posted (false if the
    /// driver did not accept `VIRTIO_SCSI_F_CHANGE`). An event that finds no buffer is
    /// dropped and reported as missed, as any event.
    pub fn param_change(&self, target: u16, lun: u16, sense: Sense) -> bool {
        // Acquire: pairs with the Release store in `ack_features`.
        if !self.acked.load(Ordering::Acquire) {
            return false;
        }
        self.events
            .post(Event::param_change(target, lun, sense.asc, sense.ascq));
        true
    }
}
