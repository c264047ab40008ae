//! The KVM back ends of virtio-pci's interrupt and notification traits: MSI-X vectors
//! through irqfd routes (or `KVM_SIGNAL_MSI`), and queue notify addresses through
//! `KVM_IOEVENTFD`.

use std::sync::Arc;

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use virtio_pci::MsiSender;

use crate::irq_routing::{GsiRouting, MsiRoute};

/// MSI delivery for one virtio-pci function: one irqfd per MSI-X vector (a GSI whose
/// route follows the vector's message), or `KVM_SIGNAL_MSI` where KVM has no GSI routing
/// or a vector has no route.
pub struct KvmMsi {
    vm: Arc<VmFd>,
    /// Indexed by MSI-X table entry.
    routes: Vec<MsiRoute>,
    /// Whether the fallback has been reported (once per function).
    fell_back: std::sync::atomic::AtomicBool,
}

impl KvmMsi {
    /// Routes for `vectors` table entries (as many as GSIs allow; the rest signal).
    pub fn new(vm: Arc<VmFd>, routing: Option<&Arc<GsiRouting>>, vectors: usize) -> KvmMsi {
        let mut routes = Vec::with_capacity(vectors);
        if let Some(routing) = routing {
            for _ in 0..vectors {
                match routing.msi_route() {
                    Ok(route) => routes.push(route),
                    Err(e) => {
                        tracing::warn!(
                            "no irqfd route for MSI-X vector {}: {e}; it is \
                             delivered with KVM_SIGNAL_MSI",
                            routes.len()
                        );
                        break;
                    }
                }
            }
        }
        KvmMsi {
            vm,
            routes,
            fell_back: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn signal(&self, address: u64, data: u32) {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..kvm_msi::default()
        };
        // A failure (no such destination) drops the interrupt, as hardware would.
        let _ = self.vm.signal_msi(msi);
    }
}

impl MsiSender for KvmMsi {
    fn send(&self, vector: u16, address: u64, data: u32) {
        match self.routes.get(usize::from(vector)) {
            Some(route) => {
                if let Err(e) = route.send(address, data) {
                    // KVM refused the route: deliver this one directly.
                    if !self
                        .fell_back
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "MSI-X vector {vector}: irqfd route failed ({e}); \
                             delivering with KVM_SIGNAL_MSI"
                        );
                    }
                    self.signal(address, data);
                }
            }
            None => self.signal(address, data),
        }
    }
}

/// ioeventfds through `KVM_IOEVENTFD` (any write length: a wildcard registration).
pub struct KvmIoEvents(pub Arc<VmFd>);

impl KvmIoEvents {
    fn eventfd(fd: &aio_context::EventNotifier) -> std::io::Result<vmm_sys_util::eventfd::EventFd> {
        let dup = std::os::fd::AsFd::as_fd(fd).try_clone_to_owned()?;
        let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
        // SAFETY: `raw` is a descriptor we own (a dup of the eventfd, released from its
        // OwnedFd above); the EventFd takes ownership and closes it.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) })
    }
}

impl virtio_pci::IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &aio_context::EventNotifier, addr: u64) -> std::io::Result<()> {
        let efd = Self::eventfd(fd)?;
        self.0
            .register_ioevent(
                &efd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &aio_context::EventNotifier, addr: u64) {
        if let Ok(efd) = Self::eventfd(fd) {
            let _ = self.0.unregister_ioevent(
                &efd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            );
        }
    }
}
