//! The backend channel (`VHOST_USER_SET_BACKEND_REQ_FD`): the socket on which the
//! backend sends requests to the frontend. We send one: `CONFIG_CHANGE_MSG`, after a
//! `block_resize` changed the device's config space (QEMU's frontend then reads the
//! config with `GET_CONFIG` and raises the guest's config interrupt).
//!
//! The protocol library hands the channel to the backend as its `Backend` stub, which
//! cannot send `CONFIG_CHANGE_MSG` (vhost 0.18 leaves it unimplemented) and does not
//! give its socket out. The server therefore keeps its own copy of the channel's fd:
//! it already peeks at every message's fds before the library reads them (see
//! `server::check_fds`), and keeps the one a `SET_BACKEND_REQ_FD` carries.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use vhost::vhost_user::message::{BackendReq, VhostUserProtocolFeatures};

/// `VHOST_USER_SET_BACKEND_REQ_FD`'s request code.
pub(crate) const SET_BACKEND_REQ_FD: u32 = 21;

/// One export's backend channel, shared by its server (which sets the socket) and its
/// device (which knows the negotiated protocol features).
#[derive(Default)]
pub(crate) struct BackendChannel {
    socket: Mutex<Option<OwnedFd>>,
    /// The protocol features the frontend acked (0 between frontends).
    protocol: AtomicU64,
}

/// What [`ExportServer::config_changed`](crate::ExportServer::config_changed) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigNotice {
    /// `CONFIG_CHANGE_MSG` went to the frontend.
    Sent,
    /// No frontend, or one that did not negotiate `BACKEND_REQ` and `CONFIG` (it
    /// reads the new config when it next asks).
    NotNegotiated,
    /// The frontend does not read its backend channel (the message would block), or
    /// the channel is gone: nothing was sent.
    Dropped,
}

impl BackendChannel {
    pub(crate) fn set_socket(&self, socket: Option<OwnedFd>) {
        *self.socket.lock().unwrap_or_else(|e| e.into_inner()) = socket;
    }

    pub(crate) fn set_protocol_features(&self, features: u64) {
        // Relaxed: read under the socket's lock in `config_changed`, which orders it
        // with the session's lock-protected updates of the socket.
        self.protocol.store(features, Ordering::Relaxed);
    }

    /// Sends `CONFIG_CHANGE_MSG` if the frontend negotiated it, never blocking (a
    /// frontend that does not read its channel loses the notice, nothing else).
    pub(crate) fn config_changed(&self) -> ConfigNotice {
        use nix::sys::socket::{MsgFlags, send};
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::CONFIG;
        let acked =
            VhostUserProtocolFeatures::from_bits_truncate(self.protocol.load(Ordering::Relaxed));
        let Some(fd) = socket.as_ref().filter(|_| acked.contains(wanted)) else {
            return ConfigNotice::NotNegotiated;
        };
        let bytes = config_change_message();
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match send(fd.as_raw_fd(), &bytes, flags) {
            Ok(n) if n == bytes.len() => ConfigNotice::Sent,
            r => {
                let e = r.map_or_else(io::Error::from, |_| io::Error::other("short send"));
                tracing::warn!("vhost-user: CONFIG_CHANGE_MSG not sent: {e}");
                ConfigNotice::Dropped
            }
        }
    }
}

/// The message: the vhost-user header alone (the library keeps its header type
/// private): the request code, flags = protocol version 1 without NEED_REPLY (no reply
/// wanted; QEMU replies only when it is set), payload size 0. Little-endian u32s.
fn config_change_message() -> [u8; 12] {
    let code: u32 = BackendReq::CONFIG_CHANGE_MSG.into();
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&code.to_le_bytes());
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn channel(features: VhostUserProtocolFeatures) -> (BackendChannel, UnixStream) {
        let (ours, frontend) = UnixStream::pair().unwrap();
        let c = BackendChannel::default();
        c.set_socket(Some(OwnedFd::from(ours)));
        c.set_protocol_features(features.bits());
        (c, frontend)
    }

    #[test]
    fn config_change_goes_out_only_when_negotiated() {
        use std::io::Read;
        let both = VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::CONFIG;
        let (c, mut frontend) = channel(both);
        assert_eq!(c.config_changed(), ConfigNotice::Sent);
        let mut got = [0u8; 12];
        frontend.read_exact(&mut got).unwrap();
        assert_eq!(u32::from_le_bytes(got[0..4].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(got[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(got[8..12].try_into().unwrap()), 0);

        let (c, _frontend) = channel(VhostUserProtocolFeatures::BACKEND_REQ);
        assert_eq!(c.config_changed(), ConfigNotice::NotNegotiated);
        assert_eq!(
            BackendChannel::default().config_changed(),
            ConfigNotice::NotNegotiated
        );
    }

    #[test]
    fn a_frontend_that_never_reads_its_channel_loses_notices_not_the_daemon() {
        let both = VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::CONFIG;
        let (c, frontend) = channel(both);
        let mut dropped = false;
        for _ in 0..1_000_000 {
            if c.config_changed() == ConfigNotice::Dropped {
                dropped = true;
                break;
            }
        }
        assert!(
            dropped,
            "a full socket drops the notice instead of blocking"
        );
        drop(frontend);
        assert_eq!(
            c.config_changed(),
            ConfigNotice::Dropped,
            "a closed channel too"
        );
    }
}
