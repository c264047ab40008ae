//! The VM's GSI routing table and MSI delivery through irqfds.
//!
//! `KVM_SET_GSI_ROUTING` replaces the *whole* table, so one owner keeps it: the PC's
//! irqchip routes ([`pc_routes`]: QEMU's `kvm_pc_setup_irq_routing`, which differs from
//! the table `KVM_CREATE_IRQCHIP` installs in wiring the PIT's GSI 0 to IOAPIC pin 2 —
//! the IRQ0 override fw_cfg and the MP table declare) plus one MSI route per
//! [`MsiRoute`]. An `MsiRoute` owns a GSI above the IOAPIC's pins and an
//! eventfd registered as that GSI's irqfd; [`MsiRoute::send`] writes the eventfd, and
//! KVM injects the message from the eventfd's wake-up (QEMU's
//! `kvm_irqchip_add_msi_route` + `kvm_irqchip_add_irqfd_notifier_gsi`).
//!
//! The route's address/data follow the guest's MSI-X table lazily: `send` compares the
//! message with the one installed for its GSI and commits a new table only when it
//! changed (the guest rewrites a vector rarely: at driver start and on affinity
//! changes). Masking stays with the caller (the MSI-X table model), which only sends for
//! unmasked vectors, so irqfds are never detached on mask as QEMU must do for vhost.
//!
//! ```text
//! device thread ── MsiRoute::send(addr, data) ──► [changed? commit table under lock]
//!                                              └─► eventfd write ──► KVM irqfd ─► LAPIC
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
    kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
};
use kvm_ioctls::{Cap, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The in-kernel IOAPIC's pin count: GSIs below this are the irqchip's.
pub const IOAPIC_PINS: u32 = 24;

/// The most routes KVM accepts in one table (`KVM_MAX_IRQ_ROUTES`); GSI numbers stay
/// below it too.
const MAX_ROUTES: u32 = 4096;

/// How many MSI routes fit beside the PC's irqchip routes.
fn max_msi_routes() -> usize {
    MAX_ROUTES as usize - pc_routes().len()
}

/// The VM's GSI routing table. Cheap to share (`Arc`); every change commits the whole
/// table under one lock, so concurrent route changes never install a table that lacks
/// another's route.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    /// MSI routes by GSI: the message each GSI delivers, `None` until first sent.
    msi: BTreeMap<u32, Option<(u64, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

fn msi(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: address as u32,
                address_hi: (address >> 32) as u32,
                data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The PC's irqchip routes (QEMU's `kvm_pc_setup_irq_routing` with PCI): GSI 0–15 to
/// their 8259 pin (master for 0–7, slave for 8–15) except the cascade GSI 2; GSI 0 to
/// IOAPIC pin 2 (the IRQ0 override: the PIT's ISA IRQ 0 arrives on pin 2, as on real
/// chipsets and in the MP/ACPI tables firmware builds); every other GSI below 24 to the
/// IOAPIC pin of that number.
pub fn pc_routes() -> Vec<kvm_irq_routing_entry> {
    let mut table = Vec::with_capacity(40);
    for gsi in 0..16 {
        if gsi == 2 {
            continue;
        }
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        table.push(irqchip(gsi, chip, pin));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => table.push(irqchip(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => table.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    table
}

impl GsiRouting {
    /// Takes over the routing table of `vm` (which must have an in-kernel irqchip) and
    /// installs the PC's irqchip routes. `None` when KVM has no GSI routing
    /// (`KVM_CAP_IRQ_ROUTING`): callers fall back to `KVM_SIGNAL_MSI`.
    ///
    /// # Errors
    ///
    /// KVM refusing the default table.
    pub fn new(vm: Arc<VmFd>) -> std::io::Result<Option<Arc<GsiRouting>>> {
        if !vm.check_extension(Cap::IrqRouting) {
            return Ok(None);
        }
        let routing = Arc::new(GsiRouting {
            vm,
            routes: Mutex::new(Routes::default()),
        });
        routing.commit(&lock(&routing.routes))?;
        Ok(Some(routing))
    }

    /// Allocates a GSI with an MSI route and an irqfd for it.
    ///
    /// # Errors
    ///
    /// No GSI left (`ENOSPC`), or the eventfd/irqfd could not be created.
    pub fn msi_route(self: &Arc<Self>) -> std::io::Result<MsiRoute> {
        let gsi = {
            let mut routes = lock(&self.routes);
            if routes.msi.len() >= max_msi_routes() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let gsi = (IOAPIC_PINS..MAX_ROUTES)
                .find(|g| !routes.msi.contains_key(g))
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOSPC))?;
            // No entry in KVM's table yet: until the first send the GSI routes nowhere.
            routes.msi.insert(gsi, None);
            gsi
        };
        let release = |e: std::io::Error| {
            lock(&self.routes).msi.remove(&gsi);
            e
        };
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(release)?;
        self.vm
            .register_irqfd(&eventfd, gsi)
            .map_err(|e| release(e.into()))?;
        Ok(MsiRoute {
            routing: self.clone(),
            gsi,
            eventfd,
            installed: Mutex::new(None),
        })
    }

    /// Points `gsi` at `message` and commits the table.
    fn set_msi(&self, gsi: u32, message: (u64, u32)) -> std::io::Result<()> {
        let mut routes = lock(&self.routes);
        let old = routes.msi.insert(gsi, Some(message));
        let result = self.commit(&routes);
        if result.is_err() {
            // Keep our view equal to what KVM holds.
            if let Some(old) = old {
                routes.msi.insert(gsi, old);
            }
        }
        result
    }

    /// Forgets `gsi` and commits the table without it.
    fn release(&self, gsi: u32) {
        let mut routes = lock(&self.routes);
        if let Some(Some(_)) = routes.msi.remove(&gsi) {
            // If KVM refuses the smaller table, its stale route stays on a GSI whose
            // irqfd is gone (harmless); keep the GSI reserved so it is never handed out
            // with that route still installed. Only a failing KVM gets here.
            if self.commit(&routes).is_err() {
                routes.msi.insert(gsi, None);
            }
        }
    }

    /// `KVM_SET_GSI_ROUTING` with the PC routes and every installed MSI route.
    fn commit(&self, routes: &Routes) -> std::io::Result<()> {
        let mut table = pc_routes();
        table.extend(
            routes
                .msi
                .iter()
                .filter_map(|(&gsi, m)| m.map(|(address, data)| msi(gsi, address, data))),
        );
        let routing = KvmIrqRouting::from_entries(&table)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
        self.vm.set_gsi_routing(&routing).map_err(Into::into)
    }

    /// How many MSI routes are allocated (for tests and `info`-style reports).
    pub fn msi_routes(&self) -> usize {
        lock(&self.routes).msi.len()
    }
}

impl std::fmt::Debug for GsiRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouting")
            .field("msi_routes", &self.msi_routes())
            .finish()
    }
}

/// One MSI vector's irqfd: a GSI whose route follows the message last sent through it.
/// Dropping it detaches the irqfd and frees the GSI.
pub struct MsiRoute {
    routing: Arc<GsiRouting>,
    gsi: u32,
    eventfd: EventFd,
    /// The message KVM's table holds for `gsi`; the lock also orders route changes
    /// before the eventfd write that relies on them.
    installed: Mutex<Option<(u64, u32)>>,
}

impl MsiRoute {
    /// Delivers the MSI message `data` to `address`: updates the route if the message
    /// changed, then signals the irqfd.
    ///
    /// # Errors
    ///
    /// KVM refusing the new route (the interrupt is not delivered), or the eventfd write
    /// failing.
    pub fn send(&self, address: u64, data: u32) -> std::io::Result<()> {
        let mut installed = lock(&self.installed);
        if *installed != Some((address, data)) {
            self.routing.set_msi(self.gsi, (address, data))?;
            *installed = Some((address, data));
        }
        self.eventfd.write(1)
    }

    /// The GSI this route owns.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl Drop for MsiRoute {
    fn drop(&mut self) {
        let _ = self.routing.vm.unregister_irqfd(&self.eventfd, self.gsi);
        self.routing.release(self.gsi);
    }
}

impl std::fmt::Debug for MsiRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiRoute")
            .field("gsi", &self.gsi)
            .field("installed", &*lock(&self.installed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::{Kvm, VcpuFd};
    use std::time::{Duration, Instant};

    #[test]
    fn pc_table_matches_qemus() {
        let t = pc_routes();
        // 15 PIC routes (no cascade), 23 IOAPIC routes (no GSI 2).
        assert_eq!(t.len(), 15 + 23);
        let route = |gsi: u32| {
            t.iter()
                .filter(|e| e.gsi == gsi)
                // SAFETY: every entry of the PC table is an irqchip route.
                .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            route(0),
            vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]
        );
        assert!(route(2).is_empty());
        assert_eq!(
            route(10),
            vec![(KVM_IRQCHIP_PIC_SLAVE, 2), (KVM_IRQCHIP_IOAPIC, 10)]
        );
        assert_eq!(route(19), vec![(KVM_IRQCHIP_IOAPIC, 19)]);
        assert!(route(24).is_empty());
    }

    /// A VM with an in-kernel irqchip and one vCPU whose LAPIC is software-enabled.
    fn vm_with_lapic() -> Option<(Arc<VmFd>, VcpuFd)> {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIPPED irq_routing: /dev/kvm unavailable: irqfd routing not exercised");
            return None;
        };
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let mut lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        let mut svr = lapic_reg(&lapic.regs, 0xf0);
        svr |= 1 << 8; // APIC software enable
        set_lapic_reg(&mut lapic.regs, 0xf0, svr);
        vcpu.set_lapic(&lapic).expect("KVM_SET_LAPIC");
        Some((vm, vcpu))
    }

    fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
        let b = |i: usize| regs[offset + i] as u8;
        u32::from_le_bytes([b(0), b(1), b(2), b(3)])
    }

    fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
        for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
            regs[offset + i] = byte as std::os::raw::c_char;
        }
    }

    /// Waits (briefly) for `vector` to be requested in the LAPIC's IRR.
    fn irr_gets(vcpu: &VcpuFd, vector: u8) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
            let word = lapic_reg(&lapic.regs, 0x200 + usize::from(vector / 32) * 0x10);
            if word & (1 << (vector % 32)) != 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The message a vector `v` to APIC ID 0 (physical, fixed, edge) is.
    const LAPIC_MSI: u64 = 0xfee0_0000;

    #[test]
    fn irqfd_delivers_msi_and_follows_message_changes() {
        let Some((vm, vcpu)) = vm_with_lapic() else {
            return;
        };
        let Some(routing) = GsiRouting::new(vm).expect("default routes") else {
            eprintln!(
                "SKIPPED irq_routing: KVM lacks KVM_CAP_IRQ_ROUTING: irqfd MSI not exercised"
            );
            return;
        };
        let a = routing.msi_route().expect("route a");
        let b = routing.msi_route().expect("route b");
        assert_ne!(a.gsi(), b.gsi());
        assert!(a.gsi() >= IOAPIC_PINS && b.gsi() >= IOAPIC_PINS);

        a.send(LAPIC_MSI, 0x31).expect("send a");
        assert!(irr_gets(&vcpu, 0x31), "vector 0x31 through irqfd");
        b.send(LAPIC_MSI, 0x45).expect("send b");
        assert!(irr_gets(&vcpu, 0x45), "vector 0x45 through a second GSI");
        // The guest reprograms a's vector: the route follows.
        a.send(LAPIC_MSI, 0x62).expect("send a again");
        assert!(
            irr_gets(&vcpu, 0x62),
            "vector 0x62 after the message changed"
        );
        assert_eq!(*lock(&a.installed), Some((LAPIC_MSI, 0x62)));

        // Dropping a route frees its GSI, and the next route reuses it.
        let gsi = a.gsi();
        drop(a);
        assert_eq!(routing.msi_routes(), 1);
        let c = routing.msi_route().expect("route c");
        assert_eq!(c.gsi(), gsi);
        c.send(LAPIC_MSI, 0x77).expect("send c");
        assert!(
            irr_gets(&vcpu, 0x77),
            "a reused GSI delivers its new message"
        );
    }

    #[test]
    fn pc_routes_reach_the_ioapic_with_the_irq0_override() {
        let Some((vm, vcpu)) = vm_with_lapic() else {
            return;
        };
        let Some(_routing) = GsiRouting::new(vm.clone()).expect("default routes") else {
            eprintln!("SKIPPED irq_routing: KVM lacks KVM_CAP_IRQ_ROUTING");
            return;
        };
        // IOAPIC pin 20 (a PCI line): vector 0x58, fixed, physical, to APIC 0, edge,
        // unmasked.
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
        // IOAPIC pin 2 (the PIT's GSI 0, through the override): vector 0x5a.
        {
            // SAFETY: chip_id is the IOAPIC, so `ioapic` is the union member KVM filled.
            let ioapic = unsafe { &mut chip.chip.ioapic };
            ioapic.redirtbl[20].bits = 0x58;
            ioapic.redirtbl[2].bits = 0x5a;
        }
        vm.set_irqchip(&chip).expect("KVM_SET_IRQCHIP");
        vm.set_irq_line(20, true).expect("raise");
        vm.set_irq_line(20, false).expect("lower");
        assert!(irr_gets(&vcpu, 0x58), "GSI 20 through the IOAPIC");
        vm.set_irq_line(0, true).expect("raise");
        vm.set_irq_line(0, false).expect("lower");
        assert!(irr_gets(&vcpu, 0x5a), "GSI 0 on IOAPIC pin 2");
    }
}
