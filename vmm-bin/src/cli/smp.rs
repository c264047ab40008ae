//! `-smp`: QEMU 10's topology arithmetic, checks and messages (qemu-opts'
//! [`SmpTopology`], for the `pc` machine and its [`MAX_CPUS`]), then the machine's own
//! limit: it presents one socket of single-threaded cores (CPUID leaves 1, 4 and 0xb,
//! the MP table) and no CPU hotplug, so a topology with more sockets, dies, modules or
//! threads, or with maxcpus above cpus, is refused rather than silently flattened.

use qemu_opts::SmpTopology;

use super::{Error, MAX_CPUS, invalid};

/// Parses `-smp`'s argument into the number of vCPUs.
pub(super) fn parse(option: &str, arg: &str) -> Result<u32, Error> {
    let t = SmpTopology::parse(option, arg, "pc", u64::from(MAX_CPUS))?;
    if t.maxcpus != t.cpus {
        return Err(invalid(
            option,
            format!(
                "maxcpus={} > cpus={}: CPU hotplug is not supported",
                t.maxcpus, t.cpus
            ),
        ));
    }
    if (t.sockets, t.dies, t.modules, t.threads) != (1, 1, 1, 1) {
        return Err(invalid(
            option,
            format!(
                "{}: not supported: this machine presents one socket of single-threaded \
                 cores (use -smp {} or cores={})",
                t.hierarchy(),
                t.cpus,
                t.cpus
            ),
        ));
    }
    // At most MAX_CPUS, checked by SmpTopology::parse.
    Ok(t.cpus as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(arg: &str) -> Result<u32, String> {
        parse("-smp", arg).map_err(|e| e.to_string())
    }

    #[test]
    fn flat_topologies_are_honoured() {
        assert_eq!(cpus("4"), Ok(4));
        // QEMU: cores=3 alone means 3 vCPUs (it used to be 1 here: the key was ignored).
        assert_eq!(cpus("cores=3"), Ok(3));
        assert_eq!(cpus("4,sockets=1,cores=4,threads=1,dies=1"), Ok(4));
    }

    /// QEMU's checks are qemu-opts' (its tests cover them); their words arrive in
    /// vmm-bin's frame.
    #[test]
    fn qemus_errors_in_qemus_words() {
        assert_eq!(
            cpus("4,foo=1").unwrap_err(),
            "invalid argument for '-smp': Parameter 'smp.foo' is unexpected"
        );
        assert_eq!(
            cpus("300").unwrap_err(),
            "invalid argument for '-smp': Invalid SMP CPUs 300. \
             The max CPUs supported by machine 'pc' is 255"
        );
    }

    #[test]
    fn what_the_machine_cannot_present_is_refused() {
        let err = |arg| cpus(arg).unwrap_err();
        // QEMU computes sockets (2) * cores (2) for each of these.
        for arg in ["4,sockets=2", "4,cores=2", "sockets=2,cores=2"] {
            assert!(
                err(arg).contains(
                    "sockets (2) * dies (1) * modules (1) * cores (2) * threads (1): not supported"
                ),
                "{arg}: {}",
                err(arg)
            );
        }
        assert!(err("4,threads=2").contains("threads (2): not supported"));
        assert!(err("4,dies=2").contains("dies (2)"));
        assert!(err("2,maxcpus=4").contains("CPU hotplug is not supported"));
    }
}
