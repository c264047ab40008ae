//! CPUID for each vCPU: KVM's supported set, with the vCPU's APIC id and topology, the
//! hypervisor bit, and without features we do not virtualize (arch-capabilities).

use kvm_bindings::CpuId;

/// CPUID.1:ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX: an APIC.
const EDX_APIC: u32 = 1 << 9;
/// CPUID.7.0:EDX bit 29: IA32_ARCH_CAPABILITIES exists (we do not offer it).
const EDX7_ARCH_CAPABILITIES: u32 = 1 << 29;
/// CPUID.1:ECX bit 24: TSC deadline timer (the in-kernel LAPIC emulates it).
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Where a named CPUID feature flag lives: leaf, subleaf, register (0 = EAX .. 3 = EDX)
/// and bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureBit {
    leaf: u32,
    subleaf: u32,
    register: u8,
    bit: u8,
}

const fn flag(leaf: u32, subleaf: u32, register: u8, bit: u8) -> FeatureBit {
    FeatureBit {
        leaf,
        subleaf,
        register,
        bit,
    }
}

/// The features `-cpu host,NAME=on|off` (or `+NAME`/`-NAME`) can toggle, by QEMU's
/// names.
pub const FEATURES: &[(&str, FeatureBit)] = &[
    ("monitor", flag(1, 0, 2, 3)),
    ("vmx", flag(1, 0, 2, 5)),
    ("ssse3", flag(1, 0, 2, 9)),
    ("fma", flag(1, 0, 2, 12)),
    ("cx16", flag(1, 0, 2, 13)),
    ("pdcm", flag(1, 0, 2, 15)),
    ("pcid", flag(1, 0, 2, 17)),
    ("sse4.1", flag(1, 0, 2, 19)),
    ("sse4.2", flag(1, 0, 2, 20)),
    ("x2apic", flag(1, 0, 2, 21)),
    ("movbe", flag(1, 0, 2, 22)),
    ("popcnt", flag(1, 0, 2, 23)),
    ("tsc-deadline", flag(1, 0, 2, 24)),
    ("aes", flag(1, 0, 2, 25)),
    ("xsave", flag(1, 0, 2, 26)),
    ("avx", flag(1, 0, 2, 28)),
    ("f16c", flag(1, 0, 2, 29)),
    ("rdrand", flag(1, 0, 2, 30)),
    ("hypervisor", flag(1, 0, 2, 31)),
    ("fsgsbase", flag(7, 0, 1, 0)),
    ("bmi1", flag(7, 0, 1, 3)),
    ("avx2", flag(7, 0, 1, 5)),
    ("smep", flag(7, 0, 1, 7)),
    ("bmi2", flag(7, 0, 1, 8)),
    ("erms", flag(7, 0, 1, 9)),
    ("invpcid", flag(7, 0, 1, 10)),
    ("avx512f", flag(7, 0, 1, 16)),
    ("rdseed", flag(7, 0, 1, 18)),
    ("smap", flag(7, 0, 1, 20)),
    ("umip", flag(7, 0, 2, 2)),
    ("pku", flag(7, 0, 2, 3)),
    ("la57", flag(7, 0, 2, 16)),
    ("rdpid", flag(7, 0, 2, 22)),
    ("md-clear", flag(7, 0, 3, 10)),
    ("spec-ctrl", flag(7, 0, 3, 26)),
    ("arch-capabilities", flag(7, 0, 3, 29)),
    ("ssbd", flag(7, 0, 3, 31)),
    ("lahf-lm", flag(0x8000_0001, 0, 2, 0)),
    ("abm", flag(0x8000_0001, 0, 2, 5)),
    ("syscall", flag(0x8000_0001, 0, 3, 11)),
    ("nx", flag(0x8000_0001, 0, 3, 20)),
    ("pdpe1gb", flag(0x8000_0001, 0, 3, 26)),
    ("rdtscp", flag(0x8000_0001, 0, 3, 27)),
    ("lm", flag(0x8000_0001, 0, 3, 29)),
];

/// The flag named `name` (QEMU's spelling; `_` accepted for `-`, and QEMU's aliases).
pub fn feature(name: &str) -> Option<FeatureBit> {
    let name = match name.replace('_', "-").as_str() {
        "sse4-1" => "sse4.1".to_string(),
        "sse4-2" => "sse4.2".to_string(),
        other => other.to_string(),
    };
    FEATURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, bit)| bit)
}

/// QEMU `-cpu` properties that are not CPUID flags of ours: accepted and ignored (with a
/// warning), so command lines written for QEMU keep working. `hv-*` and `kvm-*` too.
pub const IGNORED_PROPERTIES: &[&str] = &[
    "migratable",
    "kvm",
    "pmu",
    "host-phys-bits",
    "host-phys-bits-limit",
    "phys-bits",
    "l3-cache",
    "invtsc",
    "check",
    "enforce",
    "kvmclock",
    "kvmclock-stable-bit",
    "host-cache-info",
    "topoext",
];

/// Whether `name` is a `-cpu` property we accept but ignore.
pub fn is_ignored_property(name: &str) -> bool {
    let name = name.replace('_', "-");
    IGNORED_PROPERTIES.contains(&name.as_str())
        || name.starts_with("hv-")
        || name.starts_with("kvm-")
}

/// Applies `-cpu` toggles to `cpuid` (already [`filter`]ed): the last toggle of a
/// name wins (`+NAME`/`-NAME` are `NAME=on|off` in command-line order). Off clears the
/// bit; on
/// restores it from `supported` (KVM's set), which undoes our own filtering (e.g.
/// `arch-capabilities=on`). Returns the names turned on that KVM does not support
/// (left off), for a warning.
pub fn apply_features(
    cpuid: &mut CpuId,
    supported: &CpuId,
    toggles: &[(String, bool)],
) -> Vec<String> {
    // Fold: the last toggle of each flag wins.
    let mut folded: Vec<(String, FeatureBit, bool)> = Vec::new();
    for (name, on) in toggles {
        let Some(bit) = feature(name) else { continue };
        folded.retain(|(_, b, _)| *b != bit);
        folded.push((name.clone(), bit, *on));
    }
    let mut unsupported = Vec::new();
    for (name, bit, on) in folded {
        let have = supported
            .as_slice()
            .iter()
            .find(|e| e.function == bit.leaf && e.index == bit.subleaf)
            .is_some_and(|e| register(e, bit.register) & (1 << bit.bit) != 0);
        if on && !have {
            unsupported.push(name);
        }
        set_feature(cpuid, bit, on && have);
    }
    unsupported
}

fn register(entry: &kvm_bindings::kvm_cpuid_entry2, register: u8) -> u32 {
    let mut copy = *entry;
    *register_mut(&mut copy, register)
}

fn register_mut(entry: &mut kvm_bindings::kvm_cpuid_entry2, register: u8) -> &mut u32 {
    match register {
        0 => &mut entry.eax,
        1 => &mut entry.ebx,
        2 => &mut entry.ecx,
        _ => &mut entry.edx,
    }
}

/// Sets or clears `bit` in `cpuid`.
pub fn set_feature(cpuid: &mut CpuId, bit: FeatureBit, on: bool) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        if entry.function == bit.leaf && entry.index == bit.subleaf {
            let register = register_mut(entry, bit.register);
            if on {
                *register |= 1 << bit.bit;
            } else {
                *register &= !(1 << bit.bit);
            }
        }
    }
}

/// Bits needed to number `n` things.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `cpuid` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `count`, each
/// a single-threaded core of one socket.
pub fn filter(cpuid: &mut CpuId, index: u32, count: u32) {
    let apic_id = index;
    let core_bits = bits_for(count);
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count.clamp(1, 255) << 16);
                entry.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
                entry.edx |= EDX_APIC;
                // HTT: logical processor count in EBX[23:16] is valid.
                if count > 1 {
                    entry.edx |= 1 << 28;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; one thread per cache level.
                entry.eax = (entry.eax & 0x03ff_ffff) & !(0xfff << 14);
                entry.eax |= (count.saturating_sub(1).min(63)) << 26;
            }
            6 => {
                // No power management features we would have to emulate.
                entry.ecx &= !(1 << 3); // energy-perf bias
            }
            7 if entry.index == 0 => {
                entry.edx &= !EDX7_ARCH_CAPABILITIES;
            }
            0xa => {
                // No architectural PMU.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xb | 0x1f => {
                // x2APIC topology: level 0 SMT (1 thread), level 1 core.
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8; // SMT
                    }
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | 1; // core
                    }
                    i => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = i & 0xff;
                    }
                }
            }
            0x8000_0001 => {
                // CmpLegacy, extended APIC space, topology extensions: not offered.
                entry.ecx &= !((1 << 1) | (1 << 3) | (1 << 22));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_topology_and_arch_capabilities() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                edx: u32::MAX,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        filter(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx & EDX7_ARCH_CAPABILITIES, 0);
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 3, 2));
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn toggles_fold_last_wins_and_on_restores_only_supported_bits() {
        let supported = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ecx: (1 << 13) | (1 << 21),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                edx: EDX7_ARCH_CAPABILITIES,
                ..Default::default()
            },
        ])
        .unwrap();
        let mut cpuid = supported.clone();
        filter(&mut cpuid, 0, 1);
        assert_eq!(cpuid.as_slice()[1].edx & EDX7_ARCH_CAPABILITIES, 0);
        let t = |n: &str, on: bool| (n.to_string(), on);
        let unsupported = apply_features(
            &mut cpuid,
            &supported,
            &[
                t("cx16", false),
                t("x2apic", false),
                t("x2apic", true),
                t("arch-capabilities", true),
                t("avx2", true),
            ],
        );
        let e = cpuid.as_slice();
        assert_eq!(e[0].ecx & (1 << 13), 0, "cx16 off");
        assert_ne!(e[0].ecx & (1 << 21), 0, "x2apic: the last toggle wins");
        assert_ne!(e[1].edx & EDX7_ARCH_CAPABILITIES, 0, "on undoes our filter");
        assert_eq!(e[1].ebx & (1 << 5), 0, "avx2 unsupported stays off");
        assert_eq!(unsupported, vec!["avx2".to_string()]);
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(feature("tsc_deadline"), feature("tsc-deadline"));
        assert_eq!(feature("sse4_1"), feature("sse4.1"));
        assert!(feature("frobnicate").is_none());
        assert!(is_ignored_property("migratable"));
        assert!(is_ignored_property("hv_relaxed"));
        assert!(!is_ignored_property("cx16"));
        for (i, (a, _)) in FEATURES.iter().enumerate() {
            assert!(FEATURES[i + 1..].iter().all(|(b, _)| a != b), "{a}");
        }
    }
}
