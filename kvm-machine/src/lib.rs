//! `kvm-machine`: an i440FX PC on KVM. In-kernel PIC, IOAPIC, LAPIC and PIT; guest RAM
//! from `ram-block` in KVM memory slots; SeaBIOS (or a directly booted Linux, bzImage or
//! PVH); the `pc-platform` devices on the port bus; and vCPU threads that the main loop
//! can pause, resume, reset and stop.
//!
//! The invariant it guarantees: **a memory slot's memory outlives its registration,
//! by type.** [`MemorySlot`] is the only way the crate registers memory with KVM; it
//! holds the `Arc<RamBlock>` it maps and deletes the registration before letting it go,
//! whatever happens to the RAM list. Also: no vCPU blocks on host I/O, and pausing or
//! resetting never runs on a vCPU thread ([`ControlError::OnVcpuThread`]).
//!
//! ```text
//! main thread (AioContext)          vCPU threads
//!   Machine::new ─ creates VM, RAM, devices, parked vCPUs
//!   RunStateMachine handler ──────► Control: pause (kick + wait parked) / resume
//!   SystemEvent queue ◄───────────── devices: reset, power-off, debug exit, errors
//!   MachineControl::system_reset ─► pause, reset devices, reload firmware/kernel,
//!                                    bump reset epoch, resume
//! ```
//!
//! Port I/O and MMIO exits are dispatched through [`IoBus`](io_bus::IoBus)es (RCU-read
//! lookups); PCI functions plug into [`PciHost`] and get their BARs mapped into those
//! buses as the guest programs them. See [`Machine`] for how devices and the monitor
//! plug in, [`Runner`] for the main loop, the README for a runnable example and
//! `DESIGN.md` for the memory-slot argument and the threads.

#![deny(missing_docs)]

mod config;
pub mod cpuid;
mod error;
mod events;
pub mod ide;
pub mod irq_routing;
pub mod layout;
mod linux;
mod memory;
pub mod mptable;
pub mod pam;
mod platform;
mod runner;
mod slot;
pub mod smbios;
mod vcpu;
mod virtio;

pub use config::{DEFAULT_BIOS, DebugExitPorts, MachineConfig};
pub use error::{Error, Result};
pub use events::{EventSink, SystemEvent, event_channel};
pub use irq_routing::{GsiRouting, MsiRoute};
pub use layout::{E820Entry, E820Type, RamLayout};
pub use memory::GuestRam;
pub use platform::Platform;
pub use runner::Runner;
pub use slot::MemorySlot;
pub use vcpu::ControlError;
pub use virtio::{KvmIoEvents, KvmMsi};

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm, VmFd};

use ::pci::PciHost;
use qemu_log::boot_time;
use vcpu::{BootEntry, Control, InitialState, Vcpu};

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Whether this host can run the machine at all (`/dev/kvm` opens).
pub fn kvm_available() -> bool {
    Kvm::new().is_ok()
}

/// The machine. Built on the main thread; its vCPUs start parked and run once
/// [`MachineControl::resume_all`] is called (normally by the run state machine's
/// change handler on `cont`/start).
///
/// - **PCI devices** (virtio-pci): [`Machine::pci`] → [`PciHost::plug`] a
///   [`PciFunction`](::pci::PciFunction); INTx through
///   [`Machine::intx`]; ioeventfd/irqfd/MSI routing through [`Machine::vm_fd`]; guest
///   memory through [`Machine::ram`]; `bootorder`/other firmware files through
///   [`Machine::platform`]`.fw_cfg`. Plug before the vCPUs first run.
/// - **Monitor**: [`Machine::control`] gives a cloneable handle with
///   `pause_all`/`resume_all`/`system_reset`/`request_quit`.
pub struct Machine {
    vm: Arc<VmFd>,
    routing: Option<Arc<GsiRouting>>,
    ram: GuestRam,
    layout: RamLayout,
    platform: Platform,
    control: MachineControl,
    config: MachineConfig,
    ide: ::ide::IdeController,
}

/// A handle to the machine's vCPUs and reset path, for the main loop and the monitor.
/// Cheap to clone; `Send + Sync`. Pausing and resetting wait for vCPU threads and must
/// run on the main thread (never on a vCPU thread: they return
/// [`ControlError::OnVcpuThread`]).
#[derive(Clone)]
pub struct MachineControl {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    control: Arc<Control>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    count: usize,
    /// Re-runs firmware/kernel loading and device resets (set by `Machine::new`).
    reset_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
    boot: Arc<Mutex<Option<BootEntry>>>,
}

impl MachineControl {
    fn kick(&self) {
        let threads = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.iter() {
            use std::os::unix::thread::JoinHandleExt;
            // SAFETY: the pthread id comes from a JoinHandle we still hold (not joined),
            // so it names a live or not-yet-reaped thread; pthread_kill only queues a
            // signal whose handler (installed before any vCPU thread started) is
            // async-signal-safe.
            unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
        }
    }

    /// Parks every vCPU and returns once all are out of `KVM_RUN` (QEMU's
    /// `pause_all_vcpus`).
    ///
    /// # Errors
    ///
    /// [`ControlError::OnVcpuThread`] when called from a vCPU thread.
    pub fn pause_all(&self) -> std::result::Result<(), ControlError> {
        self.inner.control.pause(self.inner.count, || self.kick())
    }

    /// Lets the vCPUs run (QEMU's `resume_all_vcpus`).
    pub fn resume_all(&self) {
        self.inner.control.resume();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.inner.control.is_paused()
    }

    /// Resets the machine (QEMU's `qemu_system_reset`): pauses the vCPUs, resets the
    /// devices, restores the firmware (or reloads the kernel), gives every vCPU its
    /// power-on state, and resumes them if they were running.
    ///
    /// # Errors
    ///
    /// [`ControlError::OnVcpuThread`] when called from a vCPU thread.
    pub fn system_reset(&self) -> std::result::Result<(), ControlError> {
        let was_paused = self.is_paused();
        self.pause_all()?;
        if let Some(hook) = &*self
            .inner
            .reset_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            hook();
        }
        self.inner.control.bump_reset();
        if !was_paused {
            self.resume_all();
        }
        Ok(())
    }

    /// Stops and joins every vCPU thread (QEMU's `quit`: the caller then exits).
    pub fn shutdown_vcpus(&self) {
        self.inner.control.quit(|| self.kick());
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    /// The number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.inner.count
    }
}

impl std::fmt::Debug for MachineControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineControl")
            .field("vcpus", &self.inner.count)
            .field("paused", &self.is_paused())
            .finish()
    }
}

/// `KVM_SET_IRQ_LINE` as an [`IrqLine`](::pci::IrqLine).
struct KvmIrqLine(Arc<VmFd>);

impl ::pci::IrqLine for KvmIrqLine {
    fn set_level(&self, gsi: u32, level: bool) {
        let _ = self.0.set_irq_line(gsi, level);
    }
}

impl Machine {
    /// Builds the VM `config` describes; devices report to `events` (which must hand
    /// them to the main loop, not act in the vCPU thread); `aio` is the main loop, where
    /// the IDE controller's I/O runs.
    ///
    /// # Errors
    ///
    /// Any [`Error`]: no KVM, RAM that cannot be mapped, a missing BIOS or kernel.
    pub fn new(
        config: &MachineConfig,
        events: EventSink,
        aio: aio_context::AioHandle,
    ) -> Result<Machine> {
        let kvm = Kvm::new().map_err(Error::NoKvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::UserMemory, "user memory"),
            (Cap::Pit2, "an in-kernel PIT"),
            (Cap::Irqfd, "irqfd"),
            // Our GSI table (IRQ0 on IOAPIC pin 2, as fw_cfg and the MP table say) and
            // MSI routes need it.
            (Cap::IrqRouting, "GSI routing"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCap(name));
            }
        }
        let vm = Arc::new(
            kvm.create_vm()
                .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?,
        );
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP)
            .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        vm.set_tss_address(layout::KVM_TSS as usize)
            .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;
        // The routing table from here on is ours (the irqchip's default routes plus one
        // MSI route per vector): every boot exercises it through the PIT and COM1.
        let routing = GsiRouting::new(vm.clone())
            .map_err(|e| Error::io("KVM_SET_GSI_ROUTING (default routes)", e))?;
        boot_time::mark("kvm");

        let layout = RamLayout::new(config.ram_bytes);
        let mut ram = GuestRam::new(&vm, layout)?;
        boot_time::mark("memory");
        let boot_entry = Arc::new(Mutex::new(None));
        if config.kernel.is_none() {
            let bios = std::fs::read(&config.bios).map_err(|error| Error::File {
                path: config.bios.clone(),
                error,
            })?;
            ram.load_bios(&vm, bios)?;
            boot_time::mark("firmware");
        }

        let platform = Platform::new(
            config,
            &vm,
            layout,
            ram.list().clone(),
            events.clone(),
            Arc::new(KvmIrqLine(vm.clone())),
            ram.pam(),
        )?;
        boot_time::mark("platform");

        let control = MachineControl {
            inner: Arc::new(ControlInner {
                control: Arc::new(Control::new_paused()),
                threads: Mutex::new(Vec::new()),
                count: config.cpus as usize,
                reset_hook: Mutex::new(None),
                boot: boot_entry,
            }),
        };
        let ide = ide::plug(&vm, &ram, &platform, aio)?;
        let machine = Machine {
            vm,
            routing,
            ram,
            layout,
            platform,
            control,
            config: config.clone(),
            ide,
        };
        machine.load_kernel()?;
        machine.install_reset_hook();
        boot_time::mark("ide");
        machine.create_vcpus(&kvm, events)?;
        boot_time::mark("vcpus");
        Ok(machine)
    }

    /// Loads `-kernel` (if any) into RAM and records the boot vCPU's entry state.
    fn load_kernel(&self) -> Result<()> {
        let Some(kernel) = &self.config.kernel else {
            return Ok(());
        };
        let entry = linux::load(
            self.ram.list(),
            self.layout,
            kernel,
            self.config.initrd.as_deref(),
            self.config.append.as_deref().unwrap_or(""),
            self.config.cpus,
        )?;
        *self
            .control
            .inner
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(entry);
        Ok(())
    }

    fn install_reset_hook(&self) {
        let platform = self.platform.resetter();
        let list = self.ram.list().clone();
        let layout = self.layout;
        let config = self.config.clone();
        let boot = self.control.inner.boot.clone();
        let rom = self.ram.rom_restorer();
        let hook = move || {
            platform();
            if let Some(restore) = &rom {
                if let Err(e) = restore() {
                    tracing::error!("reset: {e}");
                }
            }
            if let Some(kernel) = &config.kernel {
                match linux::load(
                    &list,
                    layout,
                    kernel,
                    config.initrd.as_deref(),
                    config.append.as_deref().unwrap_or(""),
                    config.cpus,
                ) {
                    Ok(entry) => {
                        *boot.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
                    }
                    Err(e) => tracing::error!("reset: cannot reload the kernel: {e}"),
                }
            }
        };
        *self
            .control
            .inner
            .reset_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    fn create_vcpus(&self, kvm: &Kvm, events: EventSink) -> Result<()> {
        vcpu::install_kick_handler().map_err(Error::Thread)?;
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let count = self.config.cpus;
        let mut threads = Vec::new();
        for index in 0..count {
            let fd = self
                .vm
                .create_vcpu(u64::from(index))
                .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
            let mut cpuid = supported.clone();
            cpuid::filter(&mut cpuid, index, count);
            let unsupported =
                cpuid::apply_features(&mut cpuid, &supported, &self.config.cpu_features);
            if index == 0 && !unsupported.is_empty() {
                tracing::warn!(
                    "KVM does not support CPU feature(s) {} (left off)",
                    unsupported.join(", ")
                );
            }
            fd.set_cpuid2(&cpuid)
                .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
            let initial =
                InitialState::capture(&fd).map_err(|e| Error::Kvm("KVM_GET_REGS/SREGS", e))?;
            let vcpu = Vcpu {
                index,
                fd,
                pio: self.platform.pio.clone(),
                mmio: self.platform.mmio.clone(),
                control: self.control.inner.control.clone(),
                events: events.clone(),
                initial,
                boot: self.control.inner.boot.clone(),
                first_run: index == 0,
            };
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu.run())
                .map_err(Error::Thread)?;
            threads.push(thread);
        }
        *self
            .control
            .inner
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(())
    }

    /// The control handle (pause/resume/reset/quit).
    pub fn control(&self) -> MachineControl {
        self.control.clone()
    }

    /// The KVM VM, for irqfd, ioeventfd and MSI routing.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// The VM's GSI routing table (MSI through irqfd); `None` where KVM has no GSI
    /// routing, and MSIs go through `KVM_SIGNAL_MSI`.
    pub fn gsi_routing(&self) -> Option<&Arc<GsiRouting>> {
        self.routing.as_ref()
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Where RAM is.
    pub fn layout(&self) -> RamLayout {
        self.layout
    }

    /// The platform devices and buses.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The PCI host (plug functions here).
    pub fn pci(&self) -> &Arc<PciHost> {
        &self.platform.pci
    }

    /// The PIIX3 IDE controller at 00:01.1 (attach drives with [`ide::attach`]).
    pub fn ide(&self) -> &::ide::IdeController {
        &self.ide
    }

    /// PCI INTx routing.
    pub fn intx(&self) -> &Arc<pc_platform::IntxRouter> {
        &self.platform.intx
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.control.shutdown_vcpus();
    }
}
