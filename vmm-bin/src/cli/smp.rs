//! `-smp [cpus=]N[,maxcpus=M][,sockets=S][,dies=D][,modules=O][,cores=C][,threads=T]`:
//! QEMU 10's topology arithmetic for the `pc` machine (`machine_parse_smp_config`,
//! cores preferred over sockets since 6.2), its checks and messages, then the
//! machine's own limit: it presents one socket of single-threaded cores (CPUID leaves
//! 1, 4 and 0xb, the MP table), so a topology with more sockets, dies, modules or
//! threads is refused rather than silently flattened.

use qemu_opts::parse_number;

use super::{Error, MAX_CPUS, invalid, opts};

/// The topology QEMU computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Topology {
    cpus: u64,
    maxcpus: u64,
    sockets: u64,
    dies: u64,
    modules: u64,
    cores: u64,
    threads: u64,
}

impl Topology {
    /// The product of the given levels (saturating: a huge product is just wrong).
    fn product(levels: &[u64]) -> u64 {
        levels.iter().fold(1u64, |p, &l| p.saturating_mul(l))
    }

    /// QEMU's `cpu_hierarchy_to_string` for a machine with dies and modules.
    fn hierarchy(&self) -> String {
        format!(
            "sockets ({}) * dies ({}) * modules ({}) * cores ({}) * threads ({})",
            self.sockets, self.dies, self.modules, self.cores, self.threads
        )
    }
}

/// Parses `-smp`'s argument into the number of vCPUs.
pub(super) fn parse(option: &str, arg: &str) -> Result<u32, Error> {
    let kv = opts(option, arg, Some("cpus"))?;
    let mut given = Topology::default();
    let mut explicit_zero = false;
    for (k, v) in kv.iter() {
        let field = match k {
            "cpus" => &mut given.cpus,
            "maxcpus" => &mut given.maxcpus,
            "sockets" => &mut given.sockets,
            "dies" => &mut given.dies,
            "modules" => &mut given.modules,
            "cores" => &mut given.cores,
            "threads" => &mut given.threads,
            "clusters" | "books" | "drawers" => {
                let n = number(option, k, v)?;
                if n > 1 {
                    return Err(invalid(
                        option,
                        format!("{k} > 1 not supported by this machine's CPU topology"),
                    ));
                }
                explicit_zero |= n == 0;
                continue;
            }
            _ => {
                return Err(invalid(
                    option,
                    format!("Parameter 'smp.{k}' is unexpected"),
                ));
            }
        };
        *field = number(option, k, v)?;
        explicit_zero |= *field == 0;
    }
    if explicit_zero {
        return Err(invalid(
            option,
            "Invalid CPU topology: CPU topology parameters must be greater than zero",
        ));
    }
    let t = compute(given);
    if Topology::product(&[t.sockets, t.dies, t.modules, t.cores, t.threads]) != t.maxcpus {
        return Err(invalid(
            option,
            format!(
                "Invalid CPU topology: product of the hierarchy must match maxcpus: {} != maxcpus ({})",
                t.hierarchy(),
                t.maxcpus
            ),
        ));
    }
    if t.maxcpus < t.cpus {
        return Err(invalid(
            option,
            format!(
                "Invalid CPU topology: maxcpus must be equal to or greater than smp: {} == maxcpus ({}) < smp_cpus ({})",
                t.hierarchy(),
                t.maxcpus,
                t.cpus
            ),
        ));
    }
    if t.maxcpus > u64::from(MAX_CPUS) {
        return Err(invalid(
            option,
            format!(
                "Invalid SMP CPUs {}. The max CPUs supported by machine 'pc' is {MAX_CPUS}",
                t.maxcpus
            ),
        ));
    }
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
    // At most MAX_CPUS, checked above.
    Ok(t.cpus as u32)
}

fn number(option: &str, key: &str, value: &str) -> Result<u64, Error> {
    parse_number(value)
        .filter(|&n| n <= u64::from(u32::MAX))
        .ok_or_else(|| invalid(option, format!("Parameter 'smp.{key}' expects integer")))
}

/// Fills in what was omitted (0), as QEMU does for machines that prefer cores.
fn compute(mut t: Topology) -> Topology {
    t.dies = t.dies.max(1);
    t.modules = t.modules.max(1);
    if t.cpus == 0 && t.maxcpus == 0 {
        t.sockets = t.sockets.max(1);
        t.cores = t.cores.max(1);
        t.threads = t.threads.max(1);
    } else {
        if t.maxcpus == 0 {
            t.maxcpus = t.cpus;
        }
        if t.cores == 0 {
            t.sockets = t.sockets.max(1);
            t.threads = t.threads.max(1);
            t.cores = t.maxcpus / Topology::product(&[t.sockets, t.dies, t.modules, t.threads]);
        } else if t.sockets == 0 {
            t.threads = t.threads.max(1);
            t.sockets = t.maxcpus / Topology::product(&[t.dies, t.modules, t.cores, t.threads]);
        }
        if t.threads == 0 {
            t.threads = t.maxcpus / Topology::product(&[t.sockets, t.dies, t.modules, t.cores]);
        }
    }
    let total = Topology::product(&[t.sockets, t.dies, t.modules, t.cores, t.threads]);
    if t.maxcpus == 0 {
        t.maxcpus = total;
    }
    if t.cpus == 0 {
        t.cpus = t.maxcpus;
    }
    t
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
        assert_eq!(cpus("cpus=2"), Ok(2));
        // QEMU: cores=3 alone means 3 vCPUs (it used to be 1 here: the key was ignored).
        assert_eq!(cpus("cores=3"), Ok(3));
        assert_eq!(cpus("4,sockets=1,cores=4,threads=1,dies=1"), Ok(4));
        assert_eq!(cpus("4,maxcpus=4"), Ok(4));
        assert_eq!(cpus("4,clusters=1"), Ok(4));
    }

    #[test]
    fn qemus_errors_in_qemus_words() {
        let err = |arg| cpus(arg).unwrap_err();
        assert!(
            err("4,sockets=2,cores=3").ends_with(
                "Invalid CPU topology: product of the hierarchy must match maxcpus: \
                 sockets (2) * dies (1) * modules (1) * cores (3) * threads (0) != maxcpus (4)"
            ),
            "{}",
            err("4,sockets=2,cores=3")
        );
        assert!(err("4,sockets=0").ends_with("CPU topology parameters must be greater than zero"));
        assert!(err("4,cores=x").ends_with("Parameter 'smp.cores' expects integer"));
        assert!(err("4,foo=1").ends_with("Parameter 'smp.foo' is unexpected"));
        assert!(
            err("4,clusters=2")
                .ends_with("clusters > 1 not supported by this machine's CPU topology")
        );
        assert!(err("4,maxcpus=2").contains("maxcpus must be equal to or greater than smp"));
        assert!(err("300").contains("Invalid SMP CPUs 300"));
        // Overflowing products are errors, not panics.
        assert!(err("sockets=4294967295,cores=4294967295,threads=4294967295").contains("Invalid"));
        assert!(err("4294967295,cores=65536,threads=65536").contains("product of the hierarchy"));
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
