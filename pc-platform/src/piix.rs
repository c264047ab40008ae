//! The i440FX host bridge (00:00.0), the PIIX3 ISA bridge (00:01.0) with its PCI
//! interrupt routing, and the PIIX4-style power management function (00:01.3) with its
//! ACPI PM1 registers and PM timer, as QEMU's `pc` machine has them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::pci::{IntxRouting, IrqLine, PciConfig, PciFunction, PciMapping, Space};
use io_bus::{BusDevice, read_le};

use crate::isa::{ISA_BUS, IsaBus};
use crate::{EventSink, PlatformEvent};

/// Config offset of the first PAM register (PAM0) of the i440FX.
const PAM0: usize = 0x59;
/// Number of PAM registers (0x59..=0x5F).
const PAM_REGISTERS: usize = 7;

/// Where the host bridge's PAM registers take effect: the machine's memory map below
/// 1 MiB (vmm-bin's `machine::pam`).
pub trait PamListener: Send + Sync {
    /// The PAM registers (0x59..=0x5F, PAM0 first) now hold `registers`: remap the
    /// BIOS shadow area to match before returning (the guest's next access must see
    /// the new mapping). Called with the host bridge's config locked, so calls are
    /// serialized and come in register-write order.
    fn pam_changed(&self, registers: &[u8; PAM_REGISTERS]);

    /// The PAM registers at power-on and after a reset (PAM0 first). The chipset's are
    /// all 0 (the default); a machine that has the shadow RAM hold the BIOS already
    /// says so here (kvm-machine: PAM0 = 0x10, see its `pam` module).
    fn power_on(&self) -> [u8; PAM_REGISTERS] {
        [0; PAM_REGISTERS]
    }
}

/// The i440FX PMC: 8086:1237, with the PAM registers (0x59..=0x5F) and SMRAM (0x72)
/// writable. PAM writes and resets (to the listener's [`PamListener::power_on`]
/// values, all 0 by default) are passed to a
/// [`PamListener`] that remaps 0xC0000–0xFFFFF; without one (direct kernel boot, no
/// BIOS) they are only stored, and the area stays RAM. SMRAM is stored only.
pub struct I440fxHost {
    config: Mutex<PciConfig>,
    pam: Option<Arc<dyn PamListener>>,
}

impl I440fxHost {
    /// The host bridge function; `pam` follows its PAM registers.
    pub fn new(pam: Option<Arc<dyn PamListener>>) -> I440fxHost {
        let mut c = PciConfig::new(0x8086, 0x1237, 0x06_00_00, 0x02);
        for pam in PAM0..PAM0 + PAM_REGISTERS {
            c.set_writable(pam, 1, 0xff);
        }
        if let Some(listener) = &pam {
            for (i, value) in listener.power_on().into_iter().enumerate() {
                c.set_u8(PAM0 + i, value);
            }
        }
        c.set_u8(0x72, 0x02); // SMRAM: default
        c.set_writable(0x72, 1, 0x78);
        I440fxHost {
            config: Mutex::new(c),
            pam,
        }
    }

    fn config(&self) -> std::sync::MutexGuard<'_, PciConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the listener what the PAM registers in `c` hold.
    fn publish_pam(&self, c: &PciConfig) {
        if let Some(pam) = &self.pam {
            let registers = std::array::from_fn(|i| c.value(PAM0 + i, 1) as u8);
            pam.pam_changed(&registers);
        }
    }
}

impl qdev_bus::Device for I440fxHost {
    fn id(&self) -> &str {
        "i440fx"
    }
    fn reset(&self) {
        self.pci_reset();
    }
}

impl PciFunction for I440fxHost {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    fn config_write(&self, offset: usize, data: &[u8]) {
        let mut c = self.config();
        c.write(offset, data);
        // SeaBIOS writes PAM as two dwords at 0x58 and 0x5C; any overlap counts.
        if offset < PAM0 + PAM_REGISTERS && PAM0 < offset + data.len() {
            self.publish_pam(&c);
        }
    }
    fn mappings(&self) -> Vec<PciMapping> {
        Vec::new()
    }
    fn pci_reset(&self) {
        let mut c = self.config();
        c.reset();
        self.publish_pam(&c);
    }
}

/// The PIIX3 ISA bridge: 8086:7000, multi-function, with the PIRQ route registers
/// (0x60..=0x63) firmware programs, and the ELCR's neighbours (0x69..). It routes PCI
/// INTx through [`IntxRouter`]; a write to a route register moves asserted lines at once
/// (QEMU's `piix3_update_irq_levels`). It owns the ISA bus (`isa.0`, see
/// [`crate::isa`]) the legacy devices are plugged into.
pub struct Piix3Isa {
    router: Arc<IntxRouter>,
    /// The ISA bus (`isa.0`) the legacy devices sit on.
    isa: IsaBus,
}

/// Routes PCI INTx pins to ISA IRQs through the PIIX3's PIRQ registers (and to IOAPIC
/// pins 16..=19, where the in-kernel IOAPIC has them), ORing devices that share a PIRQ
/// and PIRQs that share an ISA IRQ: the PC's [`IntxRouting`], driving the machine's
/// [`IrqLine`].
///
/// The level is decided and driven in one critical section: [`set_level`](Self::set_level)
/// updates the asserted set and sets the irqchip's lines before it releases the lock, so
/// two devices racing (one lowering, one raising a shared line) leave the line at the
/// level their final state calls for; a stale lower never lands after a newer raise.
pub struct IntxRouter {
    config: Arc<Mutex<PciConfig>>,
    line: Arc<dyn IrqLine>,
    /// The asserted (slot, pin)s per PIRQ. Lock order: this, then `config`.
    asserted: Mutex<[HashSet<(u8, u8)>; 4]>,
}

/// First PIRQ route register (PIRQA; PIRQB..D follow).
const PIRQ_ROUTE: usize = 0x60;
/// The route register's "routing disabled" bit.
const PIRQ_DISABLED: u8 = 0x80;
/// The first IOAPIC pin of PIRQA (PIRQB..D follow).
const PIRQ_IOAPIC_BASE: u32 = 16;

impl Piix3Isa {
    /// The ISA bridge function and the router that reads its PIRQ registers.
    pub fn new(line: Arc<dyn IrqLine>) -> (Piix3Isa, Arc<IntxRouter>) {
        let mut c = PciConfig::new(0x8086, 0x7000, 0x06_01_00, 0x00);
        c.set_multifunction();
        for pirq in 0..4 {
            c.set_u8(PIRQ_ROUTE + pirq, PIRQ_DISABLED);
            c.set_writable(PIRQ_ROUTE + pirq, 1, 0x8f);
        }
        c.set_writable(0x69, 1, 0xff);
        c.set_writable(0x70, 2, 0xffff);
        c.set_writable(0x76, 2, 0xffff);
        c.set_writable(0x80, 1, 0xff);
        c.set_writable(0xa0, 0x10, 0xffff_ffff);
        let router = Arc::new(IntxRouter {
            config: Arc::new(Mutex::new(c)),
            line,
            asserted: Mutex::new(Default::default()),
        });
        (
            Piix3Isa {
                router: router.clone(),
                isa: IsaBus::new(ISA_BUS),
            },
            router,
        )
    }

    fn config(&self) -> std::sync::MutexGuard<'_, PciConfig> {
        self.router.config()
    }
}

impl qdev_bus::Device for Piix3Isa {
    fn id(&self) -> &str {
        "piix3"
    }
    fn reset(&self) {
        self.pci_reset();
    }
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn qdev_bus::AnyBus)) {
        visit(&self.isa);
    }
}

impl PciFunction for Piix3Isa {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    fn config_write(&self, offset: usize, data: &[u8]) {
        self.router.change_config(|c| c.write(offset, data));
    }
    fn mappings(&self) -> Vec<PciMapping> {
        Vec::new()
    }
    fn pci_reset(&self) {
        self.router.change_config(PciConfig::reset);
    }
}

impl IntxRouter {
    /// The PIRQ (0..4) that `slot`'s pin `pin` (1 = INTA) is wired to (QEMU's
    /// `pci_slot_get_pirq` for the PIIX).
    pub fn pirq(slot: u8, pin: u8) -> usize {
        (usize::from(pin.wrapping_sub(1)) + usize::from(slot).wrapping_sub(1)) & 3
    }

    fn config(&self) -> std::sync::MutexGuard<'_, PciConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_asserted(&self) -> std::sync::MutexGuard<'_, [HashSet<(u8, u8)>; 4]> {
        self.asserted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ISA IRQ each PIRQ is routed to now (`None`: disabled, or an IRQ below 3).
    fn routes(&self) -> [Option<u8>; 4] {
        let c = self.config();
        std::array::from_fn(|pirq| {
            let route = c.value(PIRQ_ROUTE + pirq, 1) as u8;
            (route & PIRQ_DISABLED == 0 && (route & 0x0f) > 2).then_some(route & 0x0f)
        })
    }

    /// The level of ISA IRQ `irq`: any asserted pin on any PIRQ routed to it.
    fn isa_level(asserted: &[HashSet<(u8, u8)>; 4], routes: &[Option<u8>; 4], irq: u8) -> bool {
        (0..4).any(|p| routes[p] == Some(irq) && !asserted[p].is_empty())
    }

    /// Sets the level of `slot`'s interrupt pin `pin` (1..=4).
    pub fn set_level(&self, slot: u8, pin: u8, level: bool) {
        if !(1..=4).contains(&pin) {
            return;
        }
        let pirq = Self::pirq(slot, pin);
        // The lines are set before the lock is released: the last writer of the
        // asserted set is also the last to drive the lines.
        let mut asserted = self.lock_asserted();
        if level {
            asserted[pirq].insert((slot, pin));
        } else {
            asserted[pirq].remove(&(slot, pin));
        }
        let routes = self.routes();
        if let Some(irq) = routes[pirq] {
            self.line
                .set_level(u32::from(irq), Self::isa_level(&asserted, &routes, irq));
        }
        self.line
            .set_level(PIRQ_IOAPIC_BASE + pirq as u32, !asserted[pirq].is_empty());
    }

    /// Applies `change` to the config space and moves asserted lines whose PIRQ route
    /// it changed: the IRQs a PIRQ leaves are re-evaluated (lowered unless another PIRQ
    /// still drives them), the IRQs it joins are raised.
    fn change_config(&self, change: impl FnOnce(&mut PciConfig)) {
        let asserted = self.lock_asserted();
        let before = self.routes();
        change(&mut self.config());
        let after = self.routes();
        if before == after {
            return;
        }
        let mut irqs: Vec<u8> = before.iter().chain(&after).flatten().copied().collect();
        irqs.sort_unstable();
        irqs.dedup();
        for irq in irqs {
            self.line
                .set_level(u32::from(irq), Self::isa_level(&asserted, &after, irq));
        }
    }
}

impl IntxRouting for IntxRouter {
    fn set_level(&self, slot: u8, pin: u8, level: bool) {
        IntxRouter::set_level(self, slot, pin, level);
    }
}

/// Length of the PM I/O block.
pub const PM_IO_LEN: u64 = 0x40;
const PM1_CNT_SCI_EN: u16 = 1 << 0;
const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// The ACPI PM timer's frequency.
const PM_TIMER_HZ: u128 = 3_579_545;

/// The ACPI PM1 event/control registers and the PM timer, shared by the PM function's
/// I/O block and the APM control port.
pub struct PmState {
    regs: Mutex<Pm1>,
    start: Instant,
    events: EventSink,
}

#[derive(Default)]
struct Pm1 {
    sts: u16,
    en: u16,
    cnt: u16,
}

impl PmState {
    /// Registers that report power-off requests to `events`.
    pub fn new(events: EventSink) -> Arc<PmState> {
        Arc::new(PmState {
            regs: Mutex::new(Pm1::default()),
            start: Instant::now(),
            events,
        })
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, Pm1> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The 24-bit PM timer now.
    pub fn timer(&self) -> u32 {
        let ticks = self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks & 0xff_ffff) as u32
    }

    /// Power-on state.
    pub fn reset(&self) {
        *self.regs() = Pm1::default();
    }

    fn write_cnt(&self, value: u16) {
        let shutdown = {
            let mut r = self.regs();
            r.cnt = value & !PM1_CNT_SLP_EN;
            // SLP_TYP 0 is S5 in the DSDTs QEMU and SeaBIOS build.
            value & PM1_CNT_SLP_EN != 0 && (value >> 10) & 7 == 0
        };
        if shutdown {
            (self.events)(PlatformEvent::Shutdown);
        }
    }
}

/// The PM I/O block (PMBASE..PMBASE+0x40).
pub struct PmRegisters(pub Arc<PmState>);

impl BusDevice for PmRegisters {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let pm = &self.0;
        match offset {
            0..=5 => {
                let r = pm.regs();
                let file = u64::from(r.sts) | u64::from(r.en) << 16 | u64::from(r.cnt) << 32;
                read_le(file, offset as usize, data);
            }
            8..=11 => read_le(u64::from(pm.timer()), offset as usize - 8, data),
            _ => data.fill(0),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let pm = &self.0;
        // Merge a partial write into the 16-bit register it falls in.
        let merge = |old: u16, at: u64| -> u16 {
            let mut bytes = old.to_le_bytes();
            for (i, d) in data.iter().enumerate() {
                if let Some(b) = bytes.get_mut((offset - at) as usize + i) {
                    *b = *d;
                }
            }
            u16::from_le_bytes(bytes)
        };
        match offset {
            0..=1 => {
                let mut r = pm.regs();
                let clear = merge(0, 0);
                r.sts &= !clear; // write 1 to clear
            }
            2..=3 => {
                let mut r = pm.regs();
                r.en = merge(r.en, 2);
            }
            4..=5 => {
                let old = pm.regs().cnt;
                pm.write_cnt(merge(old, 4));
            }
            _ => {}
        }
    }
}

/// The APM control port 0xB2: the ACPI enable/disable commands in SeaBIOS's FADT
/// (0xF1/0xF0) set or clear SCI_EN; 0xB3 is a scratch register.
pub struct ApmControl {
    pm: Arc<PmState>,
    status: Mutex<u8>,
}

impl ApmControl {
    /// The port for `pm`.
    pub fn new(pm: Arc<PmState>) -> ApmControl {
        ApmControl {
            pm,
            status: Mutex::new(0),
        }
    }
}

impl BusDevice for ApmControl {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 1 {
            if let Some(d) = data.first_mut() {
                *d = *self.status.lock().unwrap_or_else(|e| e.into_inner());
            }
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => {
                let mut r = self.pm.regs();
                match v {
                    0xf1 => r.cnt |= PM1_CNT_SCI_EN,
                    0xf0 => r.cnt &= !PM1_CNT_SCI_EN,
                    _ => {}
                }
            }
            1 => *self.status.lock().unwrap_or_else(|e| e.into_inner()) = v,
            _ => {}
        }
    }
}

/// The PIIX4 power management function: 8086:7113 rev 3, class 0x0680. The guest
/// sets the PM I/O base at 0x40 (SeaBIOS: 0x600 or 0xb000) and enables it with bit 0
/// of 0x80; the block then decodes PM1 at +0/+2/+4 and the PM timer at +8.
pub struct Piix4Pm {
    config: Mutex<PciConfig>,
    pm: Arc<PmState>,
}

impl Piix4Pm {
    /// The function, driving `pm`.
    pub fn new(pm: Arc<PmState>) -> Piix4Pm {
        let mut c = PciConfig::new(0x8086, 0x7113, 0x06_80_00, 0x03);
        c.set_interrupt_pin(1);
        c.set_u8(0x40, 0x01); // PMBASE is an I/O address
        c.set_writable(0x40, 2, 0xffc0);
        c.set_writable(0x80, 1, 0x01);
        c.set_u8(0x90, 0x01); // SMBus base: I/O
        c.set_writable(0x90, 2, 0xfff0);
        c.set_writable(0xd2, 1, 0x0f);
        // No SMM: mark it "already initialised" (DEVACTB APMC_EN), as QEMU does with
        // smm=off, so that SeaBIOS does not wait for an SMI handler.
        c.set_u8(0x5b, 0x02);
        c.set_u8(0x5f, 0x61);
        c.set_u8(0x63, 0x60);
        Piix4Pm {
            config: Mutex::new(c),
            pm,
        }
    }

    fn config(&self) -> std::sync::MutexGuard<'_, PciConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl qdev_bus::Device for Piix4Pm {
    fn id(&self) -> &str {
        "piix4-pm"
    }
    fn reset(&self) {
        self.pci_reset();
    }
}

impl PciFunction for Piix4Pm {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    fn config_write(&self, offset: usize, data: &[u8]) {
        self.config().write(offset, data);
    }
    fn mappings(&self) -> Vec<PciMapping> {
        let c = self.config();
        let base = c.value(0x40, 2) & 0xffc0;
        if c.value(0x80, 1) & 1 == 0 || base == 0 {
            return Vec::new();
        }
        vec![PciMapping {
            space: Space::Io,
            base,
            len: PM_IO_LEN,
            device: Arc::new(PmRegisters(self.pm.clone())),
        }]
    }
    fn pci_reset(&self) {
        self.config().reset();
        self.pm.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<(u32, bool)>>);
    impl IrqLine for Lines {
        fn set_level(&self, gsi: u32, level: bool) {
            self.0.lock().unwrap().push((gsi, level));
        }
    }
    impl Lines {
        /// The calls so far (and forget them).
        fn take(&self) -> Vec<(u32, bool)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
        /// The last level `gsi` was set to.
        fn level(&self, gsi: u32) -> Option<bool> {
            let calls = self.0.lock().unwrap();
            calls.iter().rev().find(|c| c.0 == gsi).map(|c| c.1)
        }
    }

    #[derive(Default)]
    struct PamLog(Mutex<Vec<[u8; PAM_REGISTERS]>>);
    impl PamListener for PamLog {
        fn pam_changed(&self, registers: &[u8; PAM_REGISTERS]) {
            self.0.lock().unwrap().push(*registers);
        }
    }

    #[test]
    fn pam_writes_and_reset_reach_the_listener() {
        let log = Arc::new(PamLog::default());
        let host = I440fxHost::new(Some(log.clone()));
        // SeaBIOS's make_bios_writable: dwords at 0x58 and 0x5C.
        host.config_write(0x58, &0x3333_3000u32.to_le_bytes());
        host.config_write(0x5c, &0x3333_3333u32.to_le_bytes());
        // Not PAM: SMRAM, the command register.
        host.config_write(0x72, &[0x0a]);
        host.config_write(0x04, &[0x06]);
        // A byte write to PAM6.
        host.config_write(0x5f, &[0x11]);
        let mut b = [0u8; 4];
        host.config_read(0x5c, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1133_3333);
        host.pci_reset();
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                [0x30, 0x33, 0x33, 0, 0, 0, 0],
                [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33],
                [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x11],
                [0; PAM_REGISTERS],
            ]
        );
        // Without a listener the registers are only stored.
        let plain = I440fxHost::new(None);
        plain.config_write(0x59, &[0x30]);
        plain.config_read(0x59, &mut b[..1]);
        assert_eq!(b[0], 0x30);
    }

    #[test]
    fn pm_block_maps_at_the_programmed_base_and_powers_off() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let pm = PmState::new(Arc::new(move |e| log.lock().unwrap().push(e)));
        let f = Piix4Pm::new(pm.clone());
        assert!(f.mappings().is_empty());
        f.config_write(0x40, &0x0601u32.to_le_bytes());
        f.config_write(0x80, &[1]);
        let mut b = [0u8; 4];
        f.config_read(0x40, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0601);
        let m = f.mappings();
        assert_eq!((m[0].base, m[0].len), (0x600, 0x40));
        let regs = PmRegisters(pm.clone());
        regs.read(8, &mut b);
        let t0 = u32::from_le_bytes(b);
        std::thread::sleep(std::time::Duration::from_millis(2));
        regs.read(8, &mut b);
        assert!(u32::from_le_bytes(b).wrapping_sub(t0) & 0xff_ffff >= 7000);
        ApmControl::new(pm.clone()).write(0, &[0xf1]);
        regs.read(4, &mut b[..2]);
        assert_eq!(b[0] & 1, 1, "SCI_EN");
        regs.write(4, &(PM1_CNT_SLP_EN | 1 << 10).to_le_bytes()); // S3: ignored
        assert!(seen.lock().unwrap().is_empty());
        regs.write(4, &(PM1_CNT_SLP_EN | 1).to_le_bytes());
        assert_eq!(*seen.lock().unwrap(), [PlatformEvent::Shutdown]);
    }

    #[test]
    fn intx_follows_the_pirq_routing_and_shares_lines() {
        let lines = Arc::new(Lines::default());
        let (isa, router) = Piix3Isa::new(lines.clone());
        isa.config_write(0x60, &[10, 10, 11, 11]);
        // Programming the routes drives the IRQs they name to their (low) level.
        assert_eq!(lines.take(), [(10, false), (11, false)]);
        // Slot 3, INTA -> PIRQ (0 + 2) & 3 = 2 -> IRQ 11.
        router.set_level(3, 1, true);
        router.set_level(7, 1, true); // (0 + 6) & 3 = 2 as well
        router.set_level(3, 1, false);
        router.set_level(7, 1, false);
        router.set_level(3, 9, true); // bad pin: ignored
        assert_eq!(
            lines.take(),
            [
                (11, true),
                (18, true),
                (11, true),
                (18, true),
                (11, true),
                (18, true),
                (11, false),
                (18, false)
            ]
        );
    }

    /// Two PIRQs routed to one ISA IRQ (SeaBIOS routes C and D both to IRQ 11): the IRQ
    /// stays high while either has an asserted pin. Before issue 14 the IRQ followed the
    /// last PIRQ that changed, and a lower on PIRQC dropped PIRQD's interrupt.
    #[test]
    fn pirqs_sharing_an_isa_irq_or_their_levels() {
        let lines = Arc::new(Lines::default());
        let (isa, router) = Piix3Isa::new(lines.clone());
        isa.config_write(0x60, &[10, 10, 11, 11]);
        router.set_level(3, 1, true); // PIRQC -> IRQ 11
        router.set_level(4, 1, true); // (0 + 3) & 3 = PIRQD -> IRQ 11
        router.set_level(3, 1, false);
        assert_eq!(lines.level(11), Some(true), "PIRQD still drives IRQ 11");
        assert_eq!(lines.level(18), Some(false));
        assert_eq!(lines.level(19), Some(true));
        router.set_level(4, 1, false);
        assert_eq!(lines.level(11), Some(false));
    }

    /// A route register written while a pin is asserted moves the interrupt (QEMU's
    /// `piix3_update_irq_levels`): the old IRQ drops, the new one rises; a reset
    /// (routing disabled) drops it.
    #[test]
    fn a_route_change_moves_an_asserted_line() {
        let lines = Arc::new(Lines::default());
        let (isa, router) = Piix3Isa::new(lines.clone());
        router.set_level(3, 1, true); // PIRQC, not routed yet
        assert_eq!(lines.level(18), Some(true), "the IOAPIC pin needs no route");
        assert_eq!(lines.level(11), None);
        isa.config_write(0x62, &[11]);
        assert_eq!(lines.level(11), Some(true), "routed: raised at once");
        isa.config_write(0x62, &[10]);
        assert_eq!(lines.level(11), Some(false));
        assert_eq!(lines.level(10), Some(true));
        isa.pci_reset();
        assert_eq!(lines.level(10), Some(false), "reset disables routing");
        let mut b = [0u8];
        isa.config_read(0x62, &mut b);
        assert_eq!(b[0], 0x80);
    }
}
