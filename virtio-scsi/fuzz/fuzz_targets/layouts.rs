//! virtio-scsi request layouts: command headers, control requests and LUN fields
//! parse or fail cleanly for any bytes (`cargo +nightly fuzz run layouts`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_scsi::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = wire::parse_cmd(data, 32) {
        assert_eq!(h.cdb.len(), 32);
        let _ = wire::decode_lun(&h.lun);
    }
    if let Ok(r) = wire::parse_ctrl(data) {
        assert!(r.response_len() <= wire::AN_RESP);
    }
});
