//! The `-qmp` option: `unix:PATH[,server=on|off][,wait=on|off]` (QEMU's chardev socket
//! syntax, the subset a QMP server needs).

use std::path::PathBuf;
use std::str::FromStr;

use qemu_opts::{Grammar, Opts};

use super::MonitorError;

/// A parsed `-qmp` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpOption {
    /// The unix socket's path.
    pub path: PathBuf,
    /// `wait=on`: block until the first client connects before going on.
    pub wait: bool,
}

impl FromStr for QmpOption {
    type Err = MonitorError;

    /// Parses `unix:PATH,server=on,wait=off` in QEMU's option grammar (qemu-opts: `,,`
    /// is a comma in `PATH`, a bare key is `key=on`). As in QEMU, `server` defaults to
    /// off (QEMU then connects out, which we do not support: `server=on` is required)
    /// and `wait` to on. The one parser of `-qmp`: the command line uses it too.
    fn from_str(s: &str) -> Result<QmpOption, MonitorError> {
        let bad = |reason: String| MonitorError::Option(reason);
        let kv = Opts::parse("-qmp", s, Grammar::opts().implied("chardev"))
            .map_err(|e| bad(format!("{} in '{s}'", e.reason())))?;
        let chardev = kv.get("chardev").unwrap_or_default();
        let Some(path) = chardev.strip_prefix("unix:") else {
            let kind = chardev.split(':').next().unwrap_or(chardev);
            return Err(bad(format!(
                "unsupported QMP backend '{kind}' in '{s}': only 'unix:PATH,server=on,wait=off' is supported"
            )));
        };
        if path.is_empty() {
            return Err(bad(format!("missing socket path in '{s}'")));
        }
        let (mut server, mut wait) = (false, true);
        for (key, value) in kv.iter() {
            let flag = match key {
                "chardev" => continue,
                "server" => &mut server,
                "wait" => &mut wait,
                _ => {
                    return Err(bad(format!(
                        "unknown parameter '{key}' in '{s}' (expected server=on|off, wait=on|off)"
                    )));
                }
            };
            *flag = qemu_opts::parse_bool(value).ok_or_else(|| {
                bad(format!(
                    "parameter '{key}' expects 'on' or 'off', got '{value}'"
                ))
            })?;
        }
        if !server {
            return Err(bad(format!(
                "server=off is not supported in '{s}': the monitor listens on a socket"
            )));
        }
        Ok(QmpOption {
            path: PathBuf::from(path),
            wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<QmpOption, String> {
        s.parse::<QmpOption>().map_err(|e| e.to_string())
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            parse("unix:/tmp/q.sock,server=on,wait=off").unwrap(),
            QmpOption {
                path: "/tmp/q.sock".into(),
                wait: false
            }
        );
        assert!(parse("unix:/tmp/q.sock,server,wait=on").unwrap().wait);
        assert_eq!(
            parse("unix:/a,,b,server=on,wait=off").unwrap().path,
            PathBuf::from("/a,b")
        );
        assert!(!parse("unix:/x,server,wait=no").unwrap().wait);
    }

    #[test]
    fn clear_errors() {
        assert!(
            parse("tcp:localhost:4444,server=on")
                .unwrap_err()
                .contains("unsupported QMP backend 'tcp'")
        );
        assert!(
            parse("unix:,server=on")
                .unwrap_err()
                .contains("missing socket path")
        );
        assert!(
            parse("unix:/x,server=off")
                .unwrap_err()
                .contains("server=off is not supported")
        );
        assert!(
            parse("unix:/x,wait=maybe")
                .unwrap_err()
                .contains("expects 'on' or 'off'")
        );
        assert!(
            parse("unix:/x,nodelay=on")
                .unwrap_err()
                .contains("unknown parameter 'nodelay'")
        );
        assert!(parse("unix:/x,").unwrap_err().contains("empty item"));
        // QEMU's default is a client (server=off), which we refuse.
        assert!(
            parse("unix:/x")
                .unwrap_err()
                .contains("server=off is not supported")
        );
    }
}
