//! The SCSI bus: LUNs at target/LUN addresses on a qdev-bus [`Bus`], command dispatch,
//! and what the target itself answers (REPORT LUNS, unit attentions, commands for
//! LUNs that do not exist).

use aio_context::AioContext;
use qdev_bus::{
    Bus, DeviceDeleted, HotplugController, HotplugHandler, ImmediateUnplug, ScsiAddress,
};

use crate::cdb::{self, Command, opcode};
use crate::disk::pages;
use crate::request::{HostStatus, ScsiDone, ScsiInFlight, ScsiRequest, ScsiResponse, data_in};
use crate::sense::{Sense, UnitAttention};
use crate::{Error, Result, ScsiDevice};

/// The highest target id a bus accepts (virtio-scsi's `max_target`).
pub const MAX_TARGET: u16 = 255;
/// The highest LUN a bus accepts (virtio-scsi's `max_lun`: flat space addressing).
pub const MAX_LUN: u16 = 16383;

/// A SCSI bus: `Bus<ScsiAddress, dyn ScsiDevice>` plus the target's own state.
///
/// Dispatch ([`execute`](ScsiBus::execute)) runs under an RCU read guard and never
/// blocks; LUNs are plugged and unplugged through [`bus`](ScsiBus::bus)'s
/// [`HotplugHandler`] (or [`plug`](ScsiBus::plug), which checks the address) on the main
/// thread. REPORT LUNS reads one version of the bus's address inventory, so the count
/// and the list it returns always agree, whatever hotplug does meanwhile.
pub struct ScsiBus {
    bus: Bus<ScsiAddress, dyn ScsiDevice>,
    /// A bus-wide unit attention (REPORTED LUNS DATA HAS CHANGED), reported once.
    unit_attention: UnitAttention,
}

impl std::fmt::Debug for ScsiBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiBus").field("bus", &self.bus).finish()
    }
}

impl ScsiBus {
    /// A bus owned by a controller (`scsi0.0` of `virtio-scsi-pci,id=scsi0`); it joins
    /// the controller's device tree when the controller is plugged.
    pub fn new(name: &str) -> ScsiBus {
        ScsiBus::from_bus(Bus::new(name))
    }

    /// A bus that is the root of its own tree (a storage daemon's SCSI export), with
    /// the sink for its DEVICE_DELETED events.
    pub fn root(name: &str, on_deleted: impl Fn(DeviceDeleted) + Send + Sync + 'static) -> ScsiBus {
        ScsiBus::from_bus(Bus::root_with_events(name, on_deleted))
    }

    fn from_bus(bus: Bus<ScsiAddress, dyn ScsiDevice>) -> ScsiBus {
        ScsiBus {
            bus: bus.with_controller(ImmediateUnplug),
            unit_attention: UnitAttention::default(),
        }
    }

    /// Replaces the hotplug controller (the transport's: it tells the guest).
    #[must_use]
    pub fn with_controller(self, controller: impl HotplugController<ScsiAddress>) -> ScsiBus {
        ScsiBus {
            bus: self.bus.with_controller(controller),
            unit_attention: self.unit_attention,
        }
    }

    /// The underlying qdev bus (for `for_each_child_bus`, walks, unplug).
    pub fn bus(&self) -> &Bus<ScsiAddress, dyn ScsiDevice> {
        &self.bus
    }

    /// Plugs `device` at `target`/`lun`.
    ///
    /// # Errors
    ///
    /// [`Error::Address`] beyond [`MAX_TARGET`]/[`MAX_LUN`]; otherwise qdev-bus's plug
    /// errors (duplicate id, occupied address, ...).
    pub fn plug(&self, target: u16, lun: u16, device: Box<dyn ScsiDevice>) -> Result<()> {
        if target > MAX_TARGET || lun > MAX_LUN {
            return Err(Error::Address { target, lun });
        }
        Ok(self.bus.plug(ScsiAddress::new(target, lun), device)?)
    }

    /// Raises a bus-wide unit attention, reported once to the next command to any LUN
    /// (QEMU's `scsi_bus_set_ua`): REPORTED LUNS DATA HAS CHANGED after a hotplug.
    pub fn set_unit_attention(&self, sense: Sense) {
        self.unit_attention.set(sense);
    }

    /// Whether any LUN of `target` exists (else a transport reports BAD_TARGET).
    pub fn has_target(&self, target: u16) -> bool {
        let guard = rcu::read();
        self.bus
            .addresses(&guard)
            .iter()
            .any(|a| a.target == target)
    }

    /// The LUNs of `target` REPORT LUNS lists, from one version of the bus: LUN 0
    /// always first (the target answers for it even when absent, as QEMU does), then
    /// the others in order.
    pub fn report_luns(&self, target: u16) -> Vec<u8> {
        let guard = rcu::read();
        let addresses = self.bus.addresses(&guard);
        let luns = std::iter::once(0).chain(
            addresses
                .iter()
                .filter(|a| a.target == target && a.lun != 0)
                .map(|a| a.lun),
        );
        pages::report_luns(luns)
    }

    /// Runs `req` for LUN `lun` of `target` in `ctx`. `done` runs once, possibly inside
    /// this call. Returns a handle for task management while the command is in flight.
    ///
    /// With no LUN at all on `target`, the command completes with
    /// [`HostStatus::BadTarget`]. For an absent LUN of an existing target the target
    /// answers itself: REPORT LUNS, INQUIRY (peripheral qualifier 3), REQUEST SENSE and
    /// everything else with LOGICAL UNIT NOT SUPPORTED.
    pub fn execute(
        &self,
        ctx: &AioContext,
        target: u16,
        lun: u16,
        req: ScsiRequest,
        done: impl Into<ScsiDone>,
    ) -> Option<ScsiInFlight> {
        let done = done.into();
        let guard = rcu::read();
        let op = req.cdb.first().copied();
        let Some(dev) = self.bus.get(&guard, ScsiAddress::new(target, lun)) else {
            drop(guard);
            self.target_command(target, &req, done);
            return None;
        };
        // A LUN being removed answers nothing any more (its unplug is pending).
        if dev.in_flight().is_removing() {
            done.complete(ScsiResponse::host(HostStatus::BadTarget));
            return None;
        }
        match op {
            Some(opcode::REPORT_LUNS) => {
                let resp = match cdb::parse(&req.cdb) {
                    Ok(Command::ReportLuns { alloc, .. }) => {
                        self.clear_luns_changed();
                        data_in(&req, &self.report_luns(target), alloc)
                    }
                    Err(sense) => ScsiResponse::check(sense, dev.descriptor_sense()),
                    // Not reached: the opcode is REPORT LUNS.
                    Ok(_) => ScsiResponse::check(Sense::INVALID_OPCODE, false),
                };
                done.complete(resp);
                None
            }
            Some(opcode::INQUIRY) => dev.execute(ctx, req, done),
            Some(opcode::REQUEST_SENSE) => match self.pending_ua(dev) {
                Some(ua) => {
                    let resp = match cdb::parse(&req.cdb) {
                        Ok(Command::RequestSense { desc, alloc }) => {
                            data_in(&req, &ua.encode(desc), alloc)
                        }
                        _ => ScsiResponse::check(Sense::INVALID_FIELD, dev.descriptor_sense()),
                    };
                    done.complete(resp);
                    None
                }
                None => dev.execute(ctx, req, done),
            },
            _ => match self.pending_ua(dev) {
                Some(ua) => {
                    done.complete(ScsiResponse::check(ua, dev.descriptor_sense()));
                    None
                }
                None => dev.execute(ctx, req, done),
            },
        }
    }

    /// The device's unit attention, else the bus's; taken (reported once).
    fn pending_ua(&self, dev: &dyn ScsiDevice) -> Option<Sense> {
        dev.take_unit_attention()
            .or_else(|| self.unit_attention.take())
    }

    fn clear_luns_changed(&self) {
        self.unit_attention.clear_if(Sense::REPORTED_LUNS_CHANGED);
    }

    /// A command for a LUN that does not exist.
    fn target_command(&self, target: u16, req: &ScsiRequest, done: ScsiDone) {
        if !self.has_target(target) {
            return done.complete(ScsiResponse::host(HostStatus::BadTarget));
        }
        let resp = match cdb::parse(&req.cdb) {
            Ok(Command::ReportLuns { alloc, .. }) => {
                self.clear_luns_changed();
                data_in(req, &self.report_luns(target), alloc)
            }
            Ok(Command::Inquiry {
                evpd: false, alloc, ..
            }) => {
                // Peripheral qualifier 3 (no LUN here), device type 1Fh.
                let mut data = [0u8; 36];
                data[0] = 0x7f;
                data[2] = 0x05;
                data[3] = 0x12;
                data[4] = 31;
                data_in(req, &data, alloc)
            }
            Ok(Command::RequestSense { desc, alloc }) => {
                data_in(req, &Sense::LUN_NOT_SUPPORTED.encode(desc), alloc)
            }
            Ok(_) => ScsiResponse::check(Sense::LUN_NOT_SUPPORTED, false),
            Err(sense) => ScsiResponse::check(sense, false),
        };
        done.complete(resp)
    }
}
