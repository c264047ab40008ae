//! The PC platform wiring: which device answers at which port, the PCI functions of
//! the i440FX/PIIX chipset, and the firmware configuration SeaBIOS reads.

use std::sync::Arc;

use ::pci::{HostEvent, IrqLine, PCI_CONFIG_PORT, PciHost};
use io_bus::{BusDevice, IoBus, PLATFORM_OWNER};
use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_irqchip,
};
use kvm_ioctls::VmFd;
use qdev_bus::PciAddress;
use ram_block::RamList;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::layout::{RamLayout, e820_bytes};
use super::{Error, Result};
use crate::config::MachineConfig;
use crate::events::{EventSink, SystemEvent, platform_sink, spawn_stdin_reader};
use pc_platform::cmos::{CMOS_BASE, Cmos, CmosLayout};
use pc_platform::debug_exit::DebugExit;
use pc_platform::debugcon::{DEBUGCON_PORT, DebugCon, ENV as DEBUGCON_ENV};
use pc_platform::fw_cfg::{FW_CFG_DMA_PORT, FW_CFG_PORT, FwCfg, keys};
use pc_platform::isa::{self, IsaDevice, IsaRegion};
use pc_platform::legacy::{I8042, I8042_COMMAND, I8042_DATA, I8042Port, Ignored, Port92};
use pc_platform::serial::{COM1_BASE, COM1_IRQ, SerialOut, SerialOutput, SerialPort};
use pc_platform::{ApmControl, I440fxHost, IntxRouter, PamListener, Piix3Isa, Piix4Pm, PmState};

/// The platform devices and the buses they sit on.
pub struct Platform {
    /// Port I/O space.
    pub pio: Arc<IoBus>,
    /// MMIO space (what KVM does not handle: LAPIC, IOAPIC are in the kernel).
    pub mmio: Arc<IoBus>,
    /// PCI bus 0 and config mechanism #1.
    pub pci: Arc<PciHost>,
    /// PCI INTx to IRQ routing (PIIX3 PIRQs).
    pub intx: Arc<IntxRouter>,
    /// The firmware configuration device (add `bootorder` etc. before the guest runs).
    pub fw_cfg: Arc<FwCfg>,
    /// COM1.
    pub serial: Arc<SerialPort>,
    /// COM1's output buffer with `-serial stdio` (the main loop attaches stdout to it).
    pub console: Option<Arc<SerialOutput>>,
    /// CMOS/RTC.
    pub cmos: Arc<Cmos>,
    /// ACPI PM registers.
    pub pm: Arc<PmState>,
    vm: Arc<VmFd>,
    irqchips: Vec<kvm_irqchip>,
    pit: Option<kvm_bindings::kvm_pit_state2>,
}

fn map(bus: &IoBus, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<()> {
    Ok(bus.insert(base, len, PLATFORM_OWNER, device)?)
}

impl Platform {
    /// Builds and maps the platform devices for `config`; `ram` is what fw_cfg's DMA
    /// interface reads and writes; the host bridge's PAM registers drive `pam` (the BIOS
    /// shadow map; `None` without a BIOS).
    ///
    /// # Errors
    ///
    /// [`Error::Ports`] if two devices collide (a debug-exit port over another device)
    /// or the serial irqfd cannot be registered.
    pub fn new(
        config: &MachineConfig,
        vm: &Arc<VmFd>,
        layout: RamLayout,
        ram: RamList,
        events: EventSink,
        irq: Arc<dyn IrqLine>,
        pam: Option<Arc<dyn PamListener>>,
    ) -> Result<Platform> {
        let platform_events = platform_sink(events.clone());
        let pio = Arc::new(IoBus::new("pio"));
        let mmio = Arc::new(IoBus::new("mmio"));

        let pm = PmState::new(platform_events.clone());
        map(&pio, 0xb2, 2, Arc::new(ApmControl::new(pm.clone())))?;

        let (reset, deleted) = (events.clone(), events.clone());
        let pci = Arc::new(PciHost::new(
            pio.clone(),
            mmio.clone(),
            Arc::new(move |HostEvent::Reset| reset(SystemEvent::Reset)),
            // The tree's DEVICE_DELETED (after the grace period) goes to the main loop.
            move |e| deleted(SystemEvent::DeviceDeleted(e)),
        ));
        map(&pio, u64::from(PCI_CONFIG_PORT), 8, pci.clone())?;
        let at = PciAddress::new;
        pci.plug(at(0, 0)?, Box::new(I440fxHost::new(pam)))?;
        let (isa, intx) = Piix3Isa::new(irq);
        pci.plug(at(1, 0)?, Box::new(isa))?;
        pci.plug(at(1, 3)?, Box::new(Piix4Pm::new(pm.clone())))?;

        // The ISA devices, plugged into the PIIX3's ISA bus (and mapped) at the end.
        let mut isa_devices = Vec::new();
        let mut add = |id: &str, regions: &[(u16, u64, Arc<dyn BusDevice>)]| {
            let regions = regions.iter().cloned();
            let regions = regions.map(|(base, len, handler)| IsaRegion { base, len, handler });
            isa_devices.push(IsaDevice::new(id, regions.collect()));
        };

        // COM1 on IRQ 4 through an irqfd (an edge into the in-kernel PIC/IOAPIC).
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("COM1 irqfd", e))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let console = (config.serial_stdio).then(SerialOutput::new);
        let out = match &console {
            Some(console) => SerialOut::Console(console.clone()),
            None => SerialOut::Sink,
        };
        let serial = Arc::new(SerialPort::new(serial_irq, out));
        if config.serial_stdio {
            spawn_stdin_reader(&serial).map_err(Error::Thread)?;
        }
        add("isa-serial", &[(COM1_BASE, 8, serial.clone())]);

        let cmos = Arc::new(Cmos::new(CmosLayout {
            below_4g: layout.below_4g,
            above_4g: layout.above_4g,
            cpus: config.cpus,
        }));
        add("mc146818rtc", &[(CMOS_BASE, 2, cmos.clone())]);

        let fw_cfg = Arc::new(firmware_config(config, layout, ram)?);
        let fw_cfg_ports = [
            (FW_CFG_PORT, 2, fw_cfg.clone() as Arc<dyn BusDevice>),
            (FW_CFG_DMA_PORT, 8, fw_cfg.dma_register()),
        ];
        add("fw_cfg_io", &fw_cfg_ports);

        let kbd = Arc::new(I8042::new(platform_events.clone()));
        let kbd_port = |port| -> (u16, u64, Arc<dyn BusDevice>) {
            let controller = kbd.clone();
            (port, 1, Arc::new(I8042Port { controller, port }))
        };
        add("i8042", &[kbd_port(I8042_DATA), kbd_port(I8042_COMMAND)]);
        add(
            "port92",
            &[(0x92, 1, Arc::new(Port92::new(platform_events.clone())))],
        );
        // 8237 DMA controllers and page registers (0x80 is the POST code port).
        let dma = [
            (
                0x00,
                0x20,
                Arc::new(Ignored::new(0x20)) as Arc<dyn BusDevice>,
            ),
            (0x80, 0x10, Arc::new(Ignored::new(0x10))),
            (0xc0, 0x20, Arc::new(Ignored::new(0x20))),
        ];
        add("i8257", &dma);

        if let Some(path) = std::env::var_os(DEBUGCON_ENV) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(format!("{DEBUGCON_ENV}={path:?}"), e))?;
            let dev = Arc::new(DebugCon::new(Box::new(file)));
            add("isa-debugcon", &[(DEBUGCON_PORT, 1, dev)]);
        }

        if let Some(value) = std::env::var_os(pc_platform::legacy::PANIC_PORT_ENV) {
            let env = pc_platform::legacy::PANIC_PORT_ENV;
            let text = value.to_string_lossy();
            let port = match text.strip_prefix("0x") {
                Some(hex) => u16::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .map_err(|_| Error::BadPort {
                var: env,
                value: text.to_string(),
            })?;
            tracing::warn!("test hook: a write to port {port:#x} panics the vCPU ({env})");
            let dev = Arc::new(pc_platform::legacy::PanicPort { port });
            add("panic-port", &[(port, 1, dev)]);
        }

        if let Some(exit) = config.debug_exit {
            let dev = Arc::new(DebugExit::new(platform_events.clone()));
            add(
                "isa-debug-exit",
                &[(exit.iobase, u64::from(exit.iosize), dev)],
            );
        }

        {
            let guard = rcu::read();
            let bus = isa::find_bus(pci.bus(), &guard).ok_or(Error::NoIsaBus)?;
            for device in isa_devices {
                isa::plug(bus, &pio, device)?;
            }
        }

        // The in-kernel chips' power-on state, restored on reset.
        let mut irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            if vm.get_irqchip(&mut chip).is_ok() {
                irqchips.push(chip);
            }
        }
        let pit = vm.get_pit2().ok();

        Ok(Platform {
            pio,
            mmio,
            pci,
            intx,
            fw_cfg,
            serial,
            console,
            cmos,
            pm,
            vm: vm.clone(),
            irqchips,
            pit,
        })
    }

    /// A closure that returns the platform to its power-on state (devices, PCI config
    /// and BAR mappings, the in-kernel PIC/IOAPIC/PIT). Runs with the vCPUs paused.
    pub fn resetter(&self) -> impl Fn() + Send + 'static {
        let cmos = self.cmos.clone();
        let fw_cfg = self.fw_cfg.clone();
        let pci = self.pci.clone();
        let vm = self.vm.clone();
        let irqchips = self.irqchips.clone();
        let pit = self.pit;
        move || {
            cmos.reset();
            fw_cfg.reset();
            pci.reset();
            for chip in &irqchips {
                let _ = vm.set_irqchip(chip);
            }
            if let Some(pit) = &pit {
                let _ = vm.set_pit2(pit);
            }
        }
    }
}

/// fw_cfg as QEMU's `pc` machine fills it for SeaBIOS (with the DMA interface).
fn firmware_config(config: &MachineConfig, layout: RamLayout, ram: RamList) -> Result<FwCfg> {
    let cfg = FwCfg::with_dma(ram);
    let cpus = config.cpus as u16;
    cfg.add_bytes(keys::RAM_SIZE, layout.total().to_le_bytes().to_vec());
    cfg.add_bytes(
        keys::NOGRAPHIC,
        u16::from(config.nographic).to_le_bytes().to_vec(),
    );
    cfg.add_bytes(keys::NB_CPUS, cpus.to_le_bytes().to_vec());
    cfg.add_bytes(keys::MAX_CPUS, cpus.to_le_bytes().to_vec());
    cfg.add_bytes(keys::MACHINE_ID, 0u32.to_le_bytes().to_vec());
    cfg.add_bytes(keys::BOOT_MENU, 0u16.to_le_bytes().to_vec());
    cfg.add_bytes(keys::IRQ0_OVERRIDE, 1u32.to_le_bytes().to_vec());
    // No NUMA: a zero node count, then one zero entry per CPU.
    cfg.add_bytes(keys::NUMA, vec![0; 8 * (1 + usize::from(cpus))]);
    cfg.add_bytes(keys::ACPI_TABLES, 0u16.to_le_bytes().to_vec());
    cfg.add_bytes(keys::SMBIOS_ENTRIES, 0u16.to_le_bytes().to_vec());
    cfg.add_bytes(keys::E820_TABLE, 0u32.to_le_bytes().to_vec());
    let file = |name: &str, data: Vec<u8>| cfg.add_file(name, data).map(drop).map_err(Error::from);
    file("etc/e820", e820_bytes(&layout.firmware_e820()))?;
    let (tables, anchor) = super::smbios::build(layout, config.cpus);
    file("etc/smbios/smbios-tables", tables)?;
    file("etc/smbios/smbios-anchor", anchor)?;
    file("etc/boot-cpus", cpus.to_le_bytes().to_vec())?;
    let wait = config.reboot_timeout_ms.unwrap_or(u32::MAX);
    file("etc/boot-fail-wait", wait.to_le_bytes().to_vec())?;
    if config.serial_stdio {
        // No display: SeaBIOS mirrors its screen output (banner, boot messages) to COM1.
        file("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec())?;
    }
    Ok(cfg)
}
