//! CDB parsing: any bytes give a command or a sense, never a panic; a parsed command's
//! fields are consistent with the bytes (`cargo +nightly fuzz run cdb` in scsi/).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi::cdb::{Command, cdb_len, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(cmd) => {
            // A parsed command had all the bytes its group needs.
            let len = cdb_len(data[0]).expect("parsed commands have a fixed length");
            assert!(data.len() >= len);
            if let Command::ReportLuns { alloc, select } = cmd {
                assert!(alloc >= 16 && select <= 2);
            }
            if let Command::WriteSame { blocks, .. } = cmd {
                assert!(blocks > 0);
            }
        }
        Err(sense) => assert_eq!(sense.key, scsi::key::ILLEGAL_REQUEST),
    }
});
