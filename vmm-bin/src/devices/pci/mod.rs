//! PCI on the PC machine: the i440FX host bridge function ([`I440fxHost`]), the PIIX3
//! ISA bridge ([`Piix3Isa`]) with its PIRQ router ([`IntxRouter`]), and the PIIX4-style
//! power management function ([`Piix4Pm`]): the models SeaBIOS looks for. The PCI-generic parts (config space, BARs,
//! capabilities, MSI-X, the host bridge's configuration mechanism #1, the INTx traits)
//! are the `pci` crate.
//!
//! The four names re-exported from `pci` below are not a shim for vmm-bin's own code
//! (which imports `pci` directly): vmm-bin's integration tests (`virtio_pci.rs`,
//! `virtio_reset.rs`, `intx_level.rs`, `common/mock_virtio.rs`) import them from this
//! path, and issue 15 requires those tests to pass unchanged while the crates are
//! extracted. Drop the re-export when the tests import `pci` themselves.

mod piix;

pub use ::pci::{IrqLine, PciFunction, PciHost, Space};
pub use piix::{
    ApmControl, I440fxHost, IntxRouter, PM_IO_LEN, PamListener, Piix3Isa, Piix4Pm, PmRegisters,
    PmState,
};
