//! `-smp [cpus=]N[,maxcpus=M][,sockets=S][,dies=D][,modules=O][,cores=C][,threads=T]`:
//! QEMU 10's topology arithmetic for a machine with dies and modules that prefers cores
//! over sockets (the `pc` machine since 6.2: `machine_parse_smp_config`), its checks
//! and its messages. What a machine can present of the result (one socket? hotplug?)
//! is the machine's to check.

use crate::{Error, Grammar, Opts, Result, parse_number};

/// A CPU topology as QEMU computes it from `-smp`: every level filled in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmpTopology {
    /// vCPUs present at start.
    pub cpus: u64,
    /// vCPUs possible (with hotplug).
    pub maxcpus: u64,
    /// Sockets.
    pub sockets: u64,
    /// Dies per socket.
    pub dies: u64,
    /// Modules per die.
    pub modules: u64,
    /// Cores per module.
    pub cores: u64,
    /// Threads per core.
    pub threads: u64,
}

impl SmpTopology {
    /// Parses `-smp`'s argument (`option` names it in errors) for a machine called
    /// `machine` that takes at most `max_cpus` vCPUs.
    ///
    /// # Errors
    ///
    /// QEMU's messages (`Invalid CPU topology: ...`, `Parameter 'smp.foo' is
    /// unexpected`, `Invalid SMP CPUs 300. The max CPUs supported by machine 'pc' is
    /// 255`) as [`Error::Invalid`], or the grammar's own errors.
    ///
    /// ```
    /// use qemu_opts::SmpTopology;
    ///
    /// let t = SmpTopology::parse("-smp", "4", "pc", 255)?;
    /// assert_eq!((t.cpus, t.sockets, t.cores, t.threads), (4, 1, 4, 1));
    /// let e = SmpTopology::parse("-smp", "4,sockets=0", "pc", 255).unwrap_err();
    /// assert!(e.reason().ends_with("CPU topology parameters must be greater than zero"));
    /// # Ok::<(), qemu_opts::Error>(())
    /// ```
    pub fn parse(option: &str, arg: &str, machine: &str, max_cpus: u64) -> Result<SmpTopology> {
        let invalid = |message: String| Error::Invalid {
            option: option.to_owned(),
            message,
        };
        let kv = Opts::parse(option, arg, Grammar::opts().implied("cpus"))?;
        let mut given = SmpTopology::default();
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
                        return Err(invalid(format!(
                            "{k} > 1 not supported by this machine's CPU topology"
                        )));
                    }
                    explicit_zero |= n == 0;
                    continue;
                }
                _ => return Err(invalid(format!("Parameter 'smp.{k}' is unexpected"))),
            };
            *field = number(option, k, v)?;
            explicit_zero |= *field == 0;
        }
        if explicit_zero {
            return Err(invalid(
                "Invalid CPU topology: CPU topology parameters must be greater than zero".into(),
            ));
        }
        let t = given.computed();
        if product(&[t.sockets, t.dies, t.modules, t.cores, t.threads]) != t.maxcpus {
            return Err(invalid(format!(
                "Invalid CPU topology: product of the hierarchy must match maxcpus: {} != maxcpus ({})",
                t.hierarchy(),
                t.maxcpus
            )));
        }
        if t.maxcpus < t.cpus {
            return Err(invalid(format!(
                "Invalid CPU topology: maxcpus must be equal to or greater than smp: {} == maxcpus ({}) < smp_cpus ({})",
                t.hierarchy(),
                t.maxcpus,
                t.cpus
            )));
        }
        if t.maxcpus > max_cpus {
            return Err(invalid(format!(
                "Invalid SMP CPUs {}. The max CPUs supported by machine '{machine}' is {max_cpus}",
                t.maxcpus
            )));
        }
        Ok(t)
    }

    /// QEMU's `cpu_hierarchy_to_string` for a machine with dies and modules:
    /// `sockets (1) * dies (1) * modules (1) * cores (4) * threads (1)`.
    pub fn hierarchy(&self) -> String {
        format!(
            "sockets ({}) * dies ({}) * modules ({}) * cores ({}) * threads ({})",
            self.sockets, self.dies, self.modules, self.cores, self.threads
        )
    }

    /// Fills in what was omitted (0), as QEMU does for machines that prefer cores.
    fn computed(mut self) -> SmpTopology {
        let t = &mut self;
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
                t.cores = t.maxcpus / product(&[t.sockets, t.dies, t.modules, t.threads]);
            } else if t.sockets == 0 {
                t.threads = t.threads.max(1);
                t.sockets = t.maxcpus / product(&[t.dies, t.modules, t.cores, t.threads]);
            }
            if t.threads == 0 {
                t.threads = t.maxcpus / product(&[t.sockets, t.dies, t.modules, t.cores]);
            }
        }
        let total = product(&[t.sockets, t.dies, t.modules, t.cores, t.threads]);
        if t.maxcpus == 0 {
            t.maxcpus = total;
        }
        if t.cpus == 0 {
            t.cpus = t.maxcpus;
        }
        self
    }
}

/// The product of the given levels (saturating: a huge product is just wrong).
fn product(levels: &[u64]) -> u64 {
    levels.iter().fold(1u64, |p, &l| p.saturating_mul(l))
}

/// A level's value: QEMU's integer (here at most `u32::MAX`).
fn number(option: &str, key: &str, value: &str) -> Result<u64> {
    parse_number(value)
        .filter(|&n| n <= u64::from(u32::MAX))
        .ok_or_else(|| Error::Invalid {
            option: option.to_owned(),
            message: format!("Parameter 'smp.{key}' expects integer"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(arg: &str) -> std::result::Result<u64, String> {
        SmpTopology::parse("-smp", arg, "pc", 255)
            .map(|t| t.cpus)
            .map_err(|e| e.reason())
    }

    #[test]
    fn qemus_arithmetic() {
        assert_eq!(cpus("4"), Ok(4));
        assert_eq!(cpus("cpus=2"), Ok(2));
        // QEMU: cores=3 alone means 3 vCPUs.
        assert_eq!(cpus("cores=3"), Ok(3));
        assert_eq!(cpus("4,sockets=1,cores=4,threads=1,dies=1"), Ok(4));
        assert_eq!(cpus("4,maxcpus=4"), Ok(4));
        assert_eq!(cpus("4,clusters=1"), Ok(4));
        let t = SmpTopology::parse("-smp", "4,sockets=2", "pc", 255).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads), (2, 2, 1));
        let t = SmpTopology::parse("-smp", "2,maxcpus=4", "pc", 255).unwrap();
        assert_eq!((t.cpus, t.maxcpus, t.cores), (2, 4, 4));
        assert_eq!(
            t.hierarchy(),
            "sockets (1) * dies (1) * modules (1) * cores (4) * threads (1)"
        );
    }

    #[test]
    fn qemus_errors_in_qemus_words() {
        let err = |arg| cpus(arg).unwrap_err();
        assert_eq!(
            err("4,sockets=2,cores=3"),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: \
             sockets (2) * dies (1) * modules (1) * cores (3) * threads (0) != maxcpus (4)"
        );
        assert!(err("4,sockets=0").ends_with("CPU topology parameters must be greater than zero"));
        assert_eq!(err("4,cores=x"), "Parameter 'smp.cores' expects integer");
        assert_eq!(err("4,foo=1"), "Parameter 'smp.foo' is unexpected");
        assert_eq!(
            err("4,clusters=2"),
            "clusters > 1 not supported by this machine's CPU topology"
        );
        assert!(err("4,maxcpus=2").contains("maxcpus must be equal to or greater than smp"));
        assert_eq!(
            err("300"),
            "Invalid SMP CPUs 300. The max CPUs supported by machine 'pc' is 255"
        );
        // Overflowing products are errors, not panics.
        assert!(err("sockets=4294967295,cores=4294967295,threads=4294967295").contains("Invalid"));
        assert!(err("4294967295,cores=65536,threads=65536").contains("product of the hierarchy"));
    }
}
