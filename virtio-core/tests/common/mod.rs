//! Shared by virtio-core's tests and benchmarks.

use virtio_core::InFlight;

/// What a handler that completes every chain at once tracks: nothing to cancel.
#[derive(Clone)]
pub(crate) struct NeverParked;

impl InFlight for NeverParked {
    fn is_parked(&self) -> bool {
        false
    }
    fn cancel(&self) {}
}
