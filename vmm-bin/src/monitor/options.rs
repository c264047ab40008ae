//! The `-qmp` option: `unix:PATH[,server=on|off][,wait=on|off]` (QEMU's chardev socket
//! syntax, the subset a QMP server needs).

use std::path::PathBuf;
use std::str::FromStr;

use super::MonitorError;

/// A parsed `-qmp` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpOption {
    /// The unix socket's path.
    pub path: PathBuf,
    /// `wait=on`: block until the first client connects before going on.
    pub wait: bool,
}

fn flag(key: &str, value: &str) -> Result<bool, MonitorError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(MonitorError::Option(format!(
            "parameter '{key}' expects 'on' or 'off', got '{value}'"
        ))),
    }
}

impl FromStr for QmpOption {
    type Err = MonitorError;

    /// Parses `unix:PATH,server=on,wait=off`. `server` and `wait` default to on (as
    /// QEMU's `-qmp` does); `server=off` (connecting out) is not supported. Commas in
    /// `PATH` are written `,,`, as in QEMU.
    fn from_str(s: &str) -> Result<QmpOption, MonitorError> {
        let Some(rest) = s.strip_prefix("unix:") else {
            let kind = s.split(':').next().unwrap_or(s);
            return Err(MonitorError::Option(format!(
                "unsupported QMP backend '{kind}' in '{s}': only 'unix:PATH,server=on,wait=off' is supported"
            )));
        };
        let parts = qemu_opts::split_commas(rest);
        let mut parts = parts.into_iter();
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(MonitorError::Option(format!(
                "missing socket path in '{s}'"
            )));
        }
        let (mut server, mut wait) = (true, true);
        for part in parts {
            let (key, value) = part.split_once('=').unwrap_or((part.as_str(), "on"));
            match key {
                "server" => server = flag(key, value)?,
                "wait" => wait = flag(key, value)?,
                _ => {
                    return Err(MonitorError::Option(format!(
                        "unknown parameter '{key}' in '{s}' (expected server=on|off, wait=on|off)"
                    )));
                }
            }
        }
        if !server {
            return Err(MonitorError::Option(format!(
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
            parse("unix:/a,,b,wait=off").unwrap().path,
            PathBuf::from("/a,b")
        );
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
    }
}
