//! The hotplug layer: device types by driver name, and the one path by which `-device`
//! and QMP `device_add` / `device_del` create and remove devices.
//!
//! A machine registers a [`DeviceType`] per driver (`virtio-blk-pci`, `scsi-hd`, ...):
//! the bus kind it sits on, whether it may be plugged while the guest runs, and a factory
//! that builds the device from its [`Opts`] and plugs it into the bus this layer chose.
//! [`DeviceRegistry::add`] does what QEMU's `qdev_device_add` does before it calls the
//! device: finds the driver, resolves `bus=` (or picks the first bus of the driver's
//! kind), refuses a hotplug the bus or the device cannot take, and words each refusal as
//! QEMU does, so that a management tool sees the same errors from us as from QEMU.
//!
//! The registry knows buses only through [`DeviceHost`], which the machine implements
//! over its qdev tree: the registry stays independent of how a machine is composed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use qemu_opts::Opts;

use crate::UnplugStatus;

/// The kind of bus a device plugs into, as `-device help` names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusKind {
    /// A PCI bus (`pci.0`).
    Pci,
    /// A SCSI bus (`scsi0.0`).
    Scsi,
    /// An IDE bus (`ide.0`).
    Ide,
    /// The ISA bus (`isa.0`).
    Isa,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusKind::Pci => "PCI",
            BusKind::Scsi => "SCSI",
            BusKind::Ide => "IDE",
            BusKind::Isa => "ISA",
        })
    }
}

/// The section of `-device help` a driver is listed under (QEMU's categories).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// "Controller/Bridge/Hub devices".
    Bridge,
    /// "Storage devices".
    Storage,
    /// "Misc devices".
    Misc,
}

impl Category {
    fn heading(self) -> &'static str {
        match self {
            Category::Bridge => "Controller/Bridge/Hub devices:",
            Category::Storage => "Storage devices:",
            Category::Misc => "Misc devices:",
        }
    }
}

/// A bus as the registry sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusInfo {
    /// Its name (`scsi0.0`).
    pub name: String,
    /// What plugs into it.
    pub kind: BusKind,
    /// Whether devices may be plugged and unplugged while the machine runs. A bus whose
    /// guest has no way to hear of it (a PCI bus without an ACPI or PCIe hotplug
    /// controller, the ISA bus) says no.
    pub hotpluggable: bool,
}

/// When a device is being added.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// From the command line, before the machine is ready.
    ColdPlug,
    /// From QMP, once the machine is built (running or not): QEMU calls this hotplug
    /// even while the VM is paused or in `prelaunch`.
    HotPlug,
}

/// What the machine offers the registry: its buses, and the generic part of unplug.
pub trait DeviceHost {
    /// The bus called `name`, if there is one.
    fn bus(&self, name: &str) -> Option<BusInfo>;

    /// The bus a device of `kind` goes on when `bus=` is not given: QEMU takes the first
    /// bus of that kind in the tree.
    fn default_bus(&self, kind: BusKind) -> Option<BusInfo>;

    /// The bus the device `id` sits on, or `None` if no device has that id.
    fn bus_of(&self, id: &str) -> Option<BusInfo>;

    /// Asks the device `id` to leave (its bus allowed hotplug).
    ///
    /// # Errors
    ///
    /// The bus's refusal.
    fn unplug(&self, id: &str) -> Result<UnplugStatus, DeviceError>;
}

/// A `-device` or `device_add` request, as the factory receives it.
#[derive(Debug)]
pub struct DeviceRequest {
    /// The driver (`scsi-hd`).
    pub driver: String,
    /// The device's id, if given.
    pub id: Option<String>,
    /// The bus the registry resolved (`bus=` or the default).
    pub bus: BusInfo,
    /// Cold plug or hotplug.
    pub phase: Phase,
    /// The remaining properties; the factory takes what it knows and calls
    /// [`DeviceRequest::finish`] so that an unknown property is refused.
    pub opts: Opts,
}

impl DeviceRequest {
    /// Refuses the first property the factory did not take, as QEMU words it
    /// (`Property 'scsi-hd.foo' not found`); call it once the factory has read its
    /// properties.
    ///
    /// # Errors
    ///
    /// [`DeviceError::NoSuchProperty`].
    pub fn finish(&self) -> Result<(), DeviceError> {
        match self.opts.finish() {
            Err(qemu_opts::Error::Unknown { key, .. }) => Err(DeviceError::NoSuchProperty {
                driver: self.driver.clone(),
                property: key,
            }),
            other => Ok(other?),
        }
    }
}

/// Builds a device from a request and plugs it into `request.bus`.
pub type Factory<C> = dyn Fn(&C, DeviceRequest) -> Result<(), DeviceError> + Send + Sync;

/// One driver.
pub struct DeviceType<C: ?Sized> {
    name: &'static str,
    bus: BusKind,
    category: Category,
    description: Option<&'static str>,
    hotpluggable: bool,
    factory: Arc<Factory<C>>,
}

impl<C: ?Sized> DeviceType<C> {
    /// A driver called `name` that sits on a `bus` and is built by `factory`;
    /// hotpluggable unless [`cold_plug_only`](Self::cold_plug_only) says otherwise.
    pub fn new(
        name: &'static str,
        bus: BusKind,
        category: Category,
        factory: impl Fn(&C, DeviceRequest) -> Result<(), DeviceError> + Send + Sync + 'static,
    ) -> Self {
        DeviceType {
            name,
            bus,
            category,
            description: None,
            hotpluggable: true,
            factory: Arc::new(factory),
        }
    }

    /// The text `-device help` shows after `desc`.
    pub fn description(mut self, text: &'static str) -> Self {
        self.description = Some(text);
        self
    }

    /// The device itself cannot be added or removed while the machine runs, whatever
    /// its bus allows (QEMU's `DeviceClass::hotpluggable = false`).
    pub fn cold_plug_only(mut self) -> Self {
        self.hotpluggable = false;
        self
    }

    /// The driver's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The bus kind it plugs into.
    pub fn bus(&self) -> BusKind {
        self.bus
    }
}

/// Why a device could not be added or removed. The messages are QEMU's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No `driver`.
    #[error("Parameter 'driver' is missing")]
    MissingDriver,
    /// No driver of this name.
    #[error("'{0}' is not a valid device model name")]
    UnknownDriver(String),
    /// `bus=` names no bus.
    #[error("Bus '{0}' not found")]
    NoSuchBus(String),
    /// `bus=` names a bus of another kind.
    #[error("Device '{driver}' can't go on {kind} bus")]
    WrongBus {
        /// The driver.
        driver: String,
        /// The kind of the bus named.
        kind: BusKind,
    },
    /// No bus of the driver's kind exists.
    #[error("No '{kind}' bus found for device '{driver}'")]
    NoBus {
        /// The driver.
        driver: String,
        /// The kind it needs.
        kind: BusKind,
    },
    /// The bus cannot take or give up devices while the machine runs.
    #[error("Bus '{0}' does not support hotplugging")]
    BusNotHotpluggable(String),
    /// The driver cannot be hotplugged.
    #[error("Device '{0}' does not support hotplugging")]
    DeviceNotHotpluggable(String),
    /// The id breaks QEMU's rule (a letter, then letters, digits, `-`, `.`, `_`).
    #[error("Parameter 'id' expects an identifier")]
    InvalidId(String),
    /// Another device has this id.
    #[error("Duplicate device ID '{0}'")]
    DuplicateId(String),
    /// `device_del` of an id nobody has (QMP class `DeviceNotFound`).
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    /// The driver has no such property.
    #[error("Property '{driver}.{property}' not found")]
    NoSuchProperty {
        /// The driver.
        driver: String,
        /// The property.
        property: String,
    },
    /// A property value was wrong (malformed, out of range).
    #[error("{}", .0.reason())]
    Property(#[from] qemu_opts::Error),
    /// The bus refused (occupied address, unplug already pending, ...).
    #[error("{0}")]
    Bus(crate::Error),
    /// The device model refused (its own words: "drive property not set",
    /// "Drive 'd0' is already in use by another device", ...).
    #[error("{0}")]
    Device(String),
}

impl DeviceError {
    /// The QMP error class a monitor replies with.
    pub fn qmp_class(&self) -> &'static str {
        match self {
            DeviceError::DeviceNotFound(_) => "DeviceNotFound",
            _ => "GenericError",
        }
    }
}

impl From<crate::Error> for DeviceError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::DuplicateId { id } => DeviceError::DuplicateId(id),
            crate::Error::InvalidId { id } => DeviceError::InvalidId(id),
            crate::Error::NoSuchDevice { id, .. } => DeviceError::DeviceNotFound(id),
            other => DeviceError::Bus(other),
        }
    }
}

/// The drivers a machine offers, by name.
pub struct DeviceRegistry<C: ?Sized> {
    types: BTreeMap<&'static str, DeviceType<C>>,
}

impl<C: ?Sized> Default for DeviceRegistry<C> {
    fn default() -> Self {
        DeviceRegistry {
            types: BTreeMap::new(),
        }
    }
}

impl<C: ?Sized + DeviceHost> DeviceRegistry<C> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a driver (a second one of the same name replaces the first).
    pub fn register(&mut self, device_type: DeviceType<C>) {
        self.types.insert(device_type.name, device_type);
    }

    /// The driver called `name`.
    pub fn get(&self, name: &str) -> Option<&DeviceType<C>> {
        self.types.get(name)
    }

    /// The drivers, sorted by name.
    pub fn types(&self) -> impl Iterator<Item = &DeviceType<C>> {
        self.types.values()
    }

    /// `-device help`: the drivers by category, as QEMU lists them
    /// (`name "scsi-hd", bus SCSI, desc "virtual SCSI disk"`).
    pub fn help(&self) -> String {
        let mut categories: BTreeMap<Category, Vec<&DeviceType<C>>> = BTreeMap::new();
        for t in self.types.values() {
            categories.entry(t.category).or_default().push(t);
        }
        let mut out = String::new();
        for (category, types) in categories {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(category.heading());
            out.push('\n');
            for t in types {
                out.push_str(&format!("name \"{}\", bus {}", t.name, t.bus));
                if let Some(d) = t.description {
                    out.push_str(&format!(", desc \"{d}\""));
                }
                out.push('\n');
            }
        }
        out
    }

    /// Creates the device `opts` describes (`driver`, optional `id` and `bus`, the
    /// driver's properties) and plugs it; returns its id, if it has one.
    ///
    /// # Errors
    ///
    /// In QEMU's order: no driver, an unknown driver, a bad `bus=`, no bus of the kind,
    /// a hotplug the bus or the device refuses; then the factory's own errors.
    pub fn add(
        &self,
        host: &C,
        mut opts: Opts,
        phase: Phase,
    ) -> Result<Option<String>, DeviceError> {
        let driver = opts.string("driver").ok_or(DeviceError::MissingDriver)?;
        let device_type = self
            .types
            .get(driver.as_str())
            .ok_or_else(|| DeviceError::UnknownDriver(driver.clone()))?;
        let bus = match opts.string("bus") {
            Some(name) => {
                let bus = host.bus(&name).ok_or(DeviceError::NoSuchBus(name))?;
                if bus.kind != device_type.bus {
                    return Err(DeviceError::WrongBus {
                        driver,
                        kind: bus.kind,
                    });
                }
                bus
            }
            None => host
                .default_bus(device_type.bus)
                .ok_or_else(|| DeviceError::NoBus {
                    driver: driver.clone(),
                    kind: device_type.bus,
                })?,
        };
        if phase == Phase::HotPlug {
            if !bus.hotpluggable {
                return Err(DeviceError::BusNotHotpluggable(bus.name));
            }
            if !device_type.hotpluggable {
                return Err(DeviceError::DeviceNotHotpluggable(driver));
            }
        }
        let id = opts.string("id");
        if let Some(id) = &id {
            // Before the factory takes anything (a drive) for a device that cannot be.
            if crate::device::check_id(id).is_err() {
                return Err(DeviceError::InvalidId(id.clone()));
            }
            if host.bus_of(id).is_some() {
                return Err(DeviceError::DuplicateId(id.clone()));
            }
        }
        let factory = device_type.factory.clone();
        factory(
            host,
            DeviceRequest {
                driver,
                id: id.clone(),
                bus,
                phase,
                opts,
            },
        )?;
        Ok(id)
    }

    /// QMP `device_del`: asks the device `id` to leave. [`UnplugStatus::Unplugged`]
    /// means it is gone for the guest and `DEVICE_DELETED` follows once it is reclaimed.
    ///
    /// # Errors
    ///
    /// [`DeviceError::DeviceNotFound`], [`DeviceError::BusNotHotpluggable`], or the
    /// bus's refusal.
    pub fn del(&self, host: &C, id: &str) -> Result<UnplugStatus, DeviceError> {
        let bus = host
            .bus_of(id)
            .ok_or_else(|| DeviceError::DeviceNotFound(id.to_owned()))?;
        if !bus.hotpluggable {
            return Err(DeviceError::BusNotHotpluggable(bus.name));
        }
        host.unplug(id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A host with a PCI bus that cannot hotplug and a SCSI bus that can, recording
    /// what the factories plugged.
    #[derive(Default)]
    struct Host {
        plugged: Mutex<Vec<(String, String)>>,
    }

    fn pci() -> BusInfo {
        BusInfo {
            name: "pci.0".into(),
            kind: BusKind::Pci,
            hotpluggable: false,
        }
    }

    fn scsi() -> BusInfo {
        BusInfo {
            name: "scsi0.0".into(),
            kind: BusKind::Scsi,
            hotpluggable: true,
        }
    }

    impl DeviceHost for Host {
        fn bus(&self, name: &str) -> Option<BusInfo> {
            [pci(), scsi()].into_iter().find(|b| b.name == name)
        }
        fn default_bus(&self, kind: BusKind) -> Option<BusInfo> {
            [pci(), scsi()].into_iter().find(|b| b.kind == kind)
        }
        fn bus_of(&self, id: &str) -> Option<BusInfo> {
            let plugged = self.plugged.lock().unwrap();
            let (_, bus) = plugged.iter().find(|(i, _)| i == id)?;
            self.bus(bus)
        }
        fn unplug(&self, id: &str) -> Result<UnplugStatus, DeviceError> {
            self.plugged.lock().unwrap().retain(|(i, _)| i != id);
            Ok(UnplugStatus::Unplugged)
        }
    }

    fn plug(host: &Host, mut r: DeviceRequest) -> Result<(), DeviceError> {
        let drive = r
            .opts
            .string("drive")
            .ok_or_else(|| DeviceError::Device("drive property not set".into()))?;
        r.finish()?;
        let id = r.id.unwrap_or(drive);
        host.plugged.lock().unwrap().push((id, r.bus.name));
        Ok(())
    }

    fn registry() -> DeviceRegistry<Host> {
        let mut r = DeviceRegistry::new();
        r.register(
            DeviceType::new("scsi-hd", BusKind::Scsi, Category::Storage, plug)
                .description("virtual SCSI disk"),
        );
        r.register(DeviceType::new(
            "virtio-blk-pci",
            BusKind::Pci,
            Category::Storage,
            plug,
        ));
        r.register(
            DeviceType::new("scsi-cd", BusKind::Scsi, Category::Storage, plug).cold_plug_only(),
        );
        r
    }

    fn opts(pairs: &[(&str, &str)]) -> Opts {
        Opts::from_pairs(
            "device",
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn add_err(host: &Host, pairs: &[(&str, &str)], phase: Phase) -> String {
        registry()
            .add(host, opts(pairs), phase)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn refusals_are_worded_as_qemu_words_them() {
        let host = Host::default();
        let hot = Phase::HotPlug;
        assert_eq!(add_err(&host, &[], hot), "Parameter 'driver' is missing");
        assert_eq!(
            add_err(&host, &[("driver", "nosuch")], hot),
            "'nosuch' is not a valid device model name"
        );
        assert_eq!(
            add_err(&host, &[("driver", "scsi-hd"), ("bus", "nobus.0")], hot),
            "Bus 'nobus.0' not found"
        );
        assert_eq!(
            add_err(&host, &[("driver", "scsi-hd"), ("bus", "pci.0")], hot),
            "Device 'scsi-hd' can't go on PCI bus"
        );
        assert_eq!(
            add_err(&host, &[("driver", "virtio-blk-pci"), ("drive", "d0")], hot),
            "Bus 'pci.0' does not support hotplugging"
        );
        assert_eq!(
            add_err(&host, &[("driver", "scsi-cd"), ("drive", "d0")], hot),
            "Device 'scsi-cd' does not support hotplugging"
        );
        assert_eq!(
            add_err(&host, &[("driver", "scsi-hd")], hot),
            "drive property not set"
        );
        assert_eq!(
            add_err(
                &host,
                &[("driver", "scsi-hd"), ("drive", "d"), ("foo", "1")],
                hot
            ),
            "Property 'scsi-hd.foo' not found"
        );
        assert_eq!(
            add_err(
                &host,
                &[("driver", "scsi-hd"), ("drive", "d"), ("id", "0bad")],
                hot
            ),
            "Parameter 'id' expects an identifier"
        );
    }

    #[test]
    fn cold_plug_goes_where_hotplug_may_not() {
        let host = Host::default();
        let r = registry();
        let id = r
            .add(
                &host,
                opts(&[("driver", "virtio-blk-pci"), ("drive", "d0"), ("id", "v0")]),
                Phase::ColdPlug,
            )
            .unwrap();
        assert_eq!(id.as_deref(), Some("v0"));
        r.add(
            &host,
            opts(&[("driver", "scsi-cd"), ("drive", "cd")]),
            Phase::ColdPlug,
        )
        .unwrap();
        assert_eq!(
            *host.plugged.lock().unwrap(),
            [
                ("v0".to_string(), "pci.0".to_string()),
                ("cd".to_string(), "scsi0.0".to_string())
            ]
        );
    }

    #[test]
    fn hotplug_then_unplug_through_the_bus() {
        let host = Host::default();
        let r = registry();
        let add = |id| {
            r.add(
                &host,
                opts(&[("driver", "scsi-hd"), ("drive", "d0"), ("id", id)]),
                Phase::HotPlug,
            )
        };
        add("h0").unwrap();
        assert_eq!(
            add("h0").unwrap_err().to_string(),
            "Duplicate device ID 'h0'"
        );
        assert_eq!(r.del(&host, "h0").unwrap(), UnplugStatus::Unplugged);
        let missing = r.del(&host, "h0").unwrap_err();
        assert_eq!(missing.to_string(), "Device 'h0' not found");
        assert_eq!(missing.qmp_class(), "DeviceNotFound");
        r.add(
            &host,
            opts(&[("driver", "virtio-blk-pci"), ("drive", "d0"), ("id", "v0")]),
            Phase::ColdPlug,
        )
        .unwrap();
        let refused = r.del(&host, "v0").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Bus 'pci.0' does not support hotplugging"
        );
        assert_eq!(refused.qmp_class(), "GenericError");
    }

    #[test]
    fn help_lists_drivers_by_category_as_qemu_does() {
        let help = registry().help();
        assert_eq!(
            help,
            "Storage devices:\n\
             name \"scsi-cd\", bus SCSI\n\
             name \"scsi-hd\", bus SCSI, desc \"virtual SCSI disk\"\n\
             name \"virtio-blk-pci\", bus PCI\n"
        );
    }
}
