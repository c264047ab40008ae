//! [`IdeController`]: two channels behind locks, reached from vCPU threads through
//! [`BusDevice`]s, with their I/O run in one `AioContext`.
//!
//! A port access locks its channel, runs the state machine (which never blocks) and,
//! before unlocking, drives the interrupt line to the level the state calls for. I/O
//! the state machine queued is handed to the event loop with
//! [`AioHandle::schedule_oneshot`] after the lock is dropped: the vCPU never waits for
//! the image (design.md invariant 7). The event loop submits it through the device's
//! [`Drive`] (so `rerror`/`werror` apply: a request that stops the VM is parked and
//! resubmitted from a BH when the VM resumes) and the completion locks the channel
//! again. The [`DriveRequest`]s live in a thread-local table of the event loop's
//! thread, so a reset can cancel them there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aio_context::{AioContext, AioHandle};
use block_dma::{BlockOp, DmaMemory, Drive, DriveRequest, Errno, SgList};
use io_bus::{BusDevice, IoBus};
use pci::IrqLine;
use tracing::warn;

use crate::atapi::{Atapi, Changed};
use crate::channel::{Channel, Job, JobOp, pio_ram};
use crate::device::{Device, Kind};
use crate::identify::Strings;
use crate::{Error, Result};

/// The legacy (compatibility mode) resources of the two channels: command block
/// ports, control port and ISA IRQ.
pub const LEGACY: [(u16, u16, u32); 2] = [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)];

/// What kind of device an [`IdeDevice`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// `ide-hd`: an ATA disk.
    Disk,
    /// `ide-cd`: an ATAPI CD/DVD drive.
    Cdrom,
}

/// A device to attach to a channel (QEMU's `-device ide-hd|ide-cd`).
pub struct IdeDevice {
    id: String,
    kind: DeviceKind,
    drive: Option<Drive>,
    serial: Option<String>,
    model: Option<String>,
}

impl IdeDevice {
    /// An ATA disk named `id` on `drive`.
    pub fn disk(id: impl Into<String>, drive: Drive) -> IdeDevice {
        IdeDevice {
            id: id.into(),
            kind: DeviceKind::Disk,
            drive: Some(drive),
            serial: None,
            model: None,
        }
    }

    /// A CD/DVD drive named `id`, with a disc (`Some`) or empty.
    pub fn cdrom(id: impl Into<String>, disc: Option<Drive>) -> IdeDevice {
        IdeDevice {
            id: id.into(),
            kind: DeviceKind::Cdrom,
            drive: disc,
            serial: None,
            model: None,
        }
    }

    /// Sets the serial number IDENTIFY reports (default `QM000NN`, NN the position).
    pub fn serial(mut self, serial: impl Into<String>) -> IdeDevice {
        self.serial = Some(serial.into());
        self
    }

    /// Sets the model IDENTIFY reports (default QEMU's `QEMU HARDDISK`/`QEMU DVD-ROM`).
    pub fn model(mut self, model: impl Into<String>) -> IdeDevice {
        self.model = Some(model.into());
        self
    }

    fn build(self, index: usize) -> Device {
        let cd = self.kind == DeviceKind::Cdrom;
        let strings = Strings {
            serial: self.serial.unwrap_or_else(|| format!("QM{:05}", index + 1)),
            firmware: "2.5+".into(),
            model: self
                .model
                .unwrap_or_else(|| if cd { "QEMU DVD-ROM" } else { "QEMU HARDDISK" }.into()),
        };
        let kind = if cd {
            Kind::Cdrom(Box::<Atapi>::default())
        } else {
            Kind::Disk
        };
        Device::new(self.id, kind, self.drive, strings)
    }
}

pub(crate) struct Inner {
    channels: [Mutex<Channel>; 2],
    irq: Arc<dyn IrqLine>,
    gsi: [u32; 2],
    aio: AioHandle,
    mem: DmaMemory,
}

type InflightKey = (usize, usize, u64);

thread_local! {
    /// Requests submitted from this event loop, for cancelling them on a reset.
    static INFLIGHT: RefCell<HashMap<InflightKey, DriveRequest>> = RefCell::new(HashMap::new());
}

impl Inner {
    fn lock(&self, ch: usize) -> MutexGuard<'_, Channel> {
        self.channels[ch].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, ch: usize, epoch: u64) -> InflightKey {
        (self as *const Inner as usize, ch, epoch)
    }

    /// Drives the interrupt line and hands queued work to the event loop.
    fn finish(self: &Arc<Self>, ch: usize, mut g: MutexGuard<'_, Channel>) {
        let level = g.irq_level();
        if level != g.line {
            g.line = level;
            // Under the lock: racing accesses leave the line at their final state's level.
            self.irq.set_level(self.gsi[ch], level);
        }
        let jobs = std::mem::take(&mut g.jobs);
        let cancels = std::mem::take(&mut g.cancelled);
        drop(g);
        for job in jobs {
            let me = self.clone();
            self.aio.schedule_oneshot(move || me.run_job(ch, job));
        }
        for epoch in cancels {
            let key = self.key(ch, epoch);
            self.aio.schedule_oneshot(move || {
                let req = INFLIGHT.with(|m| m.borrow_mut().remove(&key));
                if let Some(req) = req {
                    req.cancel();
                }
            });
        }
    }

    /// On the event loop: submits a job through its drive.
    fn run_job(self: &Arc<Self>, ch: usize, job: Job) {
        let Some(ctx) = AioContext::current() else {
            warn!("ide: I/O scheduled outside an AioContext; dropped");
            return;
        };
        let epoch = job.epoch;
        let me = self.clone();
        let done =
            Box::new(move |res: std::result::Result<u64, Errno>| me.complete(ch, epoch, res));
        let req = match job.op {
            JobOp::Pio {
                mem,
                dir,
                offset,
                len,
            } => {
                let mut sg = SgList::new();
                sg.push(0, len as u64);
                job.drive.dma(&ctx, &mem, dir, offset, sg, done)
            }
            JobOp::Dma { dir, offset, sg } => job.drive.dma(&ctx, &self.mem, dir, offset, sg, done),
            JobOp::Flush => job.drive.op(&ctx, || BlockOp::Flush, done),
        };
        if !req.is_done() {
            INFLIGHT.with(|m| m.borrow_mut().insert(self.key(ch, epoch), req));
        }
    }

    fn complete(self: &Arc<Self>, ch: usize, epoch: u64, res: std::result::Result<u64, Errno>) {
        let key = self.key(ch, epoch);
        drop(INFLIGHT.with(|m| m.borrow_mut().remove(&key)));
        let mut g = self.lock(ch);
        g.io_done(epoch, res);
        self.finish(ch, g);
    }
}

/// The PIIX3 IDE controller: two channels of up to two devices each.
///
/// The PCI function ([`crate::Piix3Ide`]) holds one; the machine maps the legacy ports
/// ([`IdeController::map_legacy`]) and gives it the interrupt lines.
#[derive(Clone)]
pub struct IdeController {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdeController")
            .field("gsi", &self.inner.gsi)
            .finish()
    }
}

impl IdeController {
    /// A controller whose DMA reaches `mem`, whose channels raise GSIs 14 and 15 on
    /// `irq`, whose I/O runs in the context of `aio`, with `devices[channel][unit]`.
    ///
    /// # Errors
    ///
    /// [`Error::Ram`] if the PIO buffers cannot be allocated; [`Error::DuplicateId`]
    /// if two devices share an id.
    pub fn new(
        mem: DmaMemory,
        irq: Arc<dyn IrqLine>,
        aio: AioHandle,
        devices: [[Option<IdeDevice>; 2]; 2],
    ) -> Result<IdeController> {
        let mut ids: Vec<String> = Vec::new();
        let mut built: Vec<[Option<Device>; 2]> = Vec::new();
        for (c, units) in devices.into_iter().enumerate() {
            let mut pair: [Option<Device>; 2] = [None, None];
            for (u, dev) in units.into_iter().enumerate() {
                if let Some(dev) = dev {
                    if ids.contains(&dev.id) {
                        return Err(Error::DuplicateId(dev.id));
                    }
                    ids.push(dev.id.clone());
                    pair[u] = Some(dev.build(2 * c + u));
                }
            }
            built.push(pair);
        }
        let ram = [pio_ram()?, pio_ram()?];
        let mut it = built.into_iter();
        let (a, b) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
        let guest = mem.ram().clone();
        let inner = Inner {
            channels: [
                Mutex::new(Channel::new(a, ram[0].clone(), guest.clone())),
                Mutex::new(Channel::new(b, ram[1].clone(), guest)),
            ],
            irq,
            gsi: [LEGACY[0].2, LEGACY[1].2],
            aio,
            mem,
        };
        let ctl = IdeController {
            inner: Arc::new(inner),
        };
        // Drive-DMA-capable bits for the devices present (firmware reads them).
        for ch in 0..2 {
            let mut g = ctl.inner.lock(ch);
            g.bm.status = dma_capable(&g);
        }
        Ok(ctl)
    }

    /// Attaches `device` at `unit` (0 master, 1 slave) of channel `ch` before the guest
    /// runs (cold plug: QEMU's `-device ide-hd|ide-cd,bus=ide.CH,unit=UNIT`), so that
    /// the machine can own a controller from power-on and the command line fill it.
    ///
    /// # Errors
    ///
    /// [`Error::NoUnit`] for a channel or unit past 1, [`Error::UnitInUse`] for a
    /// taken one, [`Error::DuplicateId`] for an id another device has.
    pub fn attach(&self, ch: usize, unit: usize, device: IdeDevice) -> Result<()> {
        if ch > 1 || unit > 1 {
            return Err(Error::NoUnit(ch, unit));
        }
        for c in 0..2 {
            let g = self.inner.lock(c);
            if g.devs.iter().flatten().any(|d| d.id == device.id) {
                return Err(Error::DuplicateId(device.id));
            }
        }
        let mut g = self.inner.lock(ch);
        if g.devs[unit].is_some() {
            return Err(Error::UnitInUse(unit));
        }
        g.devs[unit] = Some(device.build(2 * ch + unit));
        g.bm.status = dma_capable(&g);
        drop(g);
        Ok(())
    }

    /// The ids of the attached devices, as `(channel, unit, id, kind)`.
    pub fn devices(&self) -> Vec<(usize, usize, String, DeviceKind)> {
        let mut list = Vec::new();
        for ch in 0..2 {
            let g = self.inner.lock(ch);
            for (unit, d) in g.devs.iter().enumerate() {
                if let Some(d) = d {
                    let kind = if d.is_cd() {
                        DeviceKind::Cdrom
                    } else {
                        DeviceKind::Disk
                    };
                    list.push((ch, unit, d.id.clone(), kind));
                }
            }
        }
        list
    }

    /// Whether device `id` has a medium (a disk always; a CD drive with a disc).
    pub fn has_medium(&self, id: &str) -> Option<bool> {
        for ch in 0..2 {
            let g = self.inner.lock(ch);
            if let Some(d) = g.devs.iter().flatten().find(|d| d.id == id) {
                return Some(d.drive.is_some());
            }
        }
        None
    }

    /// The command block (8 ports: data .. status/command) of channel `ch` (0 or 1).
    pub fn command_block(&self, ch: usize) -> Arc<dyn BusDevice> {
        Arc::new(Port {
            inner: self.inner.clone(),
            ch: ch.min(1),
            which: Which::Command,
        })
    }

    /// The control block (1 port: alternate status / device control) of channel `ch`.
    pub fn control_block(&self, ch: usize) -> Arc<dyn BusDevice> {
        Arc::new(Port {
            inner: self.inner.clone(),
            ch: ch.min(1),
            which: Which::Control,
        })
    }

    /// The bus-master registers (16 bytes: channel 0 at 0, channel 1 at 8), BAR4.
    pub fn bus_master(&self) -> Arc<dyn BusDevice> {
        Arc::new(Port {
            inner: self.inner.clone(),
            ch: 0,
            which: Which::BusMaster,
        })
    }

    /// Maps both channels' legacy ports ([`LEGACY`]) into `pio`, owned by `owner`.
    ///
    /// # Errors
    ///
    /// [`Error::Ports`] if a range is taken.
    pub fn map_legacy(&self, pio: &IoBus, owner: u64) -> Result<()> {
        for (ch, (cmd, ctl, _)) in LEGACY.into_iter().enumerate() {
            pio.insert(u64::from(cmd), 8, owner, self.command_block(ch))
                .map_err(|e| Error::Ports(format!("{e:?}")))?;
            pio.insert(u64::from(ctl), 1, owner, self.control_block(ch))
                .map_err(|e| Error::Ports(format!("{e:?}")))?;
        }
        Ok(())
    }

    /// Resets both channels (system reset): devices, bus master, in-flight I/O.
    pub fn reset(&self) {
        for ch in 0..2 {
            let mut g = self.inner.lock(ch);
            g.reset();
            g.bm.status = dma_capable(&g);
            self.inner.finish(ch, g);
        }
    }

    fn with_cd<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Device, &mut Atapi) -> Result<R>,
    ) -> Result<R> {
        for ch in 0..2 {
            let mut g = self.inner.lock(ch);
            let Some(d) = g.devs.iter_mut().flatten().find(|d| d.id == id) else {
                continue;
            };
            let mut kind = std::mem::replace(&mut d.kind, Kind::Disk);
            let res = match &mut kind {
                Kind::Cdrom(a) => f(d, a),
                Kind::Disk => Err(Error::NotRemovable(id.to_string())),
            };
            d.kind = kind;
            // After the kind is back: the capacity is counted in the drive's sectors.
            d.update_size();
            if res.is_ok() {
                g.raise_irq();
            }
            self.inner.finish(ch, g);
            return res;
        }
        Err(Error::NotFound(id.to_string()))
    }

    /// Opens the tray of CD drive `id` and removes its disc (QMP `eject`). A tray the
    /// guest locked opens only with `force`; without it the guest is asked (an eject
    /// request event) and [`Error::Locked`] returned, as QEMU does.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotRemovable`] (a disk), [`Error::Locked`].
    pub fn eject(&self, id: &str, force: bool) -> Result<()> {
        self.with_cd(id, |d, a| {
            if !a.tray_open {
                open_tray(id, a, force)?;
            }
            d.drive = None;
            Ok(())
        })
    }

    /// Replaces the disc of CD drive `id` with `disc` and closes the tray (QMP
    /// `blockdev-change-medium`). The guest then sees the change: NOT READY, then
    /// UNIT ATTENTION (MEDIUM MAY HAVE CHANGED), and a "new media" event.
    ///
    /// # Errors
    ///
    /// As [`IdeController::eject`].
    pub fn change_medium(&self, id: &str, disc: Drive, force: bool) -> Result<()> {
        self.with_cd(id, |d, a| {
            if !a.tray_open {
                open_tray(id, a, force)?;
            }
            d.drive = Some(disc);
            a.tray_open = false;
            a.changed = Changed::NotReady;
            a.new_media = true;
            a.eject_request = false;
            Ok(())
        })
    }

    /// Whether the guest locked the tray of CD drive `id` (QMP `query-block`'s
    /// `locked`).
    pub fn is_locked(&self, id: &str) -> Option<bool> {
        self.cd_state(id).map(|(locked, _)| locked)
    }

    /// Whether the tray of CD drive `id` is open (`tray_open`).
    pub fn is_tray_open(&self, id: &str) -> Option<bool> {
        self.cd_state(id).map(|(_, open)| open)
    }

    fn cd_state(&self, id: &str) -> Option<(bool, bool)> {
        for ch in 0..2 {
            let mut g = self.inner.lock(ch);
            if let Some(d) = g.devs.iter_mut().flatten().find(|d| d.id == id) {
                return d.atapi().map(|a| (a.locked, a.tray_open));
            }
        }
        None
    }
}

/// QEMU's `do_open_tray`: a locked tray asks the guest and refuses unless forced.
fn open_tray(id: &str, a: &mut Atapi, force: bool) -> Result<()> {
    if a.locked {
        a.eject_request = true;
        if !force {
            return Err(Error::Locked(id.to_string()));
        }
        a.locked = false;
    }
    a.tray_open = true;
    a.changed = Changed::NotReady;
    a.new_media = true;
    Ok(())
}

fn dma_capable(g: &Channel) -> u8 {
    use crate::regs::{BM_ST_DMA0, BM_ST_DMA1};
    let mut s = g.bm.status & !(BM_ST_DMA0 | BM_ST_DMA1);
    if g.devs[0].is_some() {
        s |= BM_ST_DMA0;
    }
    if g.devs[1].is_some() {
        s |= BM_ST_DMA1;
    }
    s
}

#[derive(Clone, Copy)]
enum Which {
    Command,
    Control,
    BusMaster,
}

/// One of the controller's port ranges.
struct Port {
    inner: Arc<Inner>,
    ch: usize,
    which: Which,
}

impl BusDevice for Port {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match self.which {
            Which::Command => {
                let mut g = self.inner.lock(self.ch);
                if offset == 0 {
                    g.data_read(data);
                } else {
                    data.fill(0xff);
                    data[0] = g.read_reg(offset);
                }
                self.inner.finish(self.ch, g);
            }
            Which::Control => {
                let mut g = self.inner.lock(self.ch);
                data.fill(0xff);
                data[0] = g.alt_status();
            }
            Which::BusMaster => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = offset + i as u64;
                    let ch = (at / 8) as usize;
                    *b = if ch < 2 {
                        self.inner.lock(ch).bm_read(at % 8)
                    } else {
                        0xff
                    };
                }
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match self.which {
            Which::Command => {
                let mut g = self.inner.lock(self.ch);
                if offset == 0 {
                    g.data_write(data);
                } else if let Some(v) = data.first() {
                    g.write_reg(offset, *v);
                }
                self.inner.finish(self.ch, g);
            }
            Which::Control => {
                let mut g = self.inner.lock(self.ch);
                if let Some(v) = data.first() {
                    g.write_ctrl(*v);
                }
                self.inner.finish(self.ch, g);
            }
            Which::BusMaster => {
                for (i, v) in data.iter().enumerate() {
                    let at = offset + i as u64;
                    let ch = (at / 8) as usize;
                    if ch < 2 {
                        let mut g = self.inner.lock(ch);
                        g.bm_write(at % 8, *v);
                        self.inner.finish(ch, g);
                    }
                }
            }
        }
    }
}
