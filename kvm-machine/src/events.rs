//! What devices and vCPUs ask of the machine ([`SystemEvent`]), the sink they post to,
//! and the serial console's stdin reader.
//!
//! A [`SystemEvent`] is the platform's [`PlatformEvent`]s plus the vCPU failures only
//! the machine knows about (`InternalError`, `Fatal`). Events are handled on the main
//! thread ([`Runner`](crate::Runner)), never inside the vCPU exit that caused them.

use std::io::Read;
use std::sync::{Arc, Mutex};

use pc_platform::PlatformEvent;
use pc_platform::serial::SerialPort;

/// What a device or vCPU asks of the machine (handled on the main thread, never inside
/// the vCPU exit that caused it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// A guest-initiated reset (0xCF9, port 0x92, the i8042 pulse, a triple fault).
    Reset,
    /// A guest-initiated power-off (ACPI S5).
    Shutdown,
    /// isa-debug-exit: end the process with this status, as QEMU does.
    Exit(i32),
    /// The guest made the machine unusable (a vCPU failed); the message says how.
    InternalError(String),
    /// The VMM itself failed (a vCPU thread panicked): the process ends with status 1
    /// after printing the message, monitor or not.
    Fatal(String),
    /// An unplugged device of the PCI tree (a SCSI LUN under a virtio-scsi controller)
    /// was unrealized and dropped after its grace period: QMP's `DEVICE_DELETED`. Posted
    /// from the `call_rcu` thread, handed to [`Runner::on_device_deleted`]'s hook on
    /// the main thread.
    ///
    /// [`Runner::on_device_deleted`]: crate::Runner::on_device_deleted
    DeviceDeleted(qdev_bus::DeviceDeleted),
}

impl From<PlatformEvent> for SystemEvent {
    fn from(event: PlatformEvent) -> SystemEvent {
        match event {
            PlatformEvent::Reset => SystemEvent::Reset,
            PlatformEvent::Shutdown => SystemEvent::Shutdown,
            PlatformEvent::Exit(status) => SystemEvent::Exit(status),
        }
    }
}

/// Where devices and vCPUs send [`SystemEvent`]s.
pub type EventSink = Arc<dyn Fn(SystemEvent) + Send + Sync>;

/// `events` as the platform devices' sink: each [`PlatformEvent`] is posted as the
/// [`SystemEvent`] it stands for.
pub(crate) fn platform_sink(events: EventSink) -> pc_platform::EventSink {
    Arc::new(move |event| events(event.into()))
}

/// Starts a thread that copies stdin into `port`'s UART until stdin ends (`-serial
/// stdio`).
///
/// # Errors
///
/// The thread could not be started.
pub(crate) fn spawn_stdin_reader(port: &Arc<SerialPort>) -> std::io::Result<()> {
    let port = Arc::clone(port);
    std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = port.input(rest);
                    rest = &rest[taken..];
                    if taken == 0 {
                        // FIFO full: the guest reads slower than we type.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })
        .map(drop)
}

/// Reports a [`SystemEvent`] from a device or vCPU thread; the main loop consumes them.
pub fn event_channel(
    notify: impl Fn() + Send + Sync + 'static,
) -> (EventSink, std::sync::mpsc::Receiver<SystemEvent>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |event| {
        if matches!(
            event,
            SystemEvent::Reset | SystemEvent::Shutdown | SystemEvent::Exit(_)
        ) {
            crate::vcpu::stop_current_vcpu();
        }
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(event);
        notify();
    });
    (sink, rx)
}
