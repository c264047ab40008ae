//! Helpers shared by the integration tests.

use std::path::Path;
use std::process::Command;

/// Assembles `tests/bootsector/NAME.S` (GNU as, 16-bit) into a 512-byte boot sector
/// linked at 0x7c00, working in `dir`. `None` after `skip` says why, without binutils.
pub(crate) fn assemble_boot_sector(dir: &Path, name: &str, skip: impl Fn(&str)) -> Option<Vec<u8>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/bootsector/{name}.S"));
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    match Command::new("as")
        .args(["--32", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("as failed on {}: {s}", src.display()),
        Err(e) => {
            skip(&format!("cannot run `as` (binutils): {e}"));
            return None;
        }
    }
    let ld = Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&bin)
        .arg(&obj)
        .status()
        .expect("run ld");
    assert!(ld.success(), "ld failed");
    let sector = std::fs::read(&bin).unwrap();
    assert_eq!(
        sector.len(),
        512,
        "the boot sector must be exactly 512 bytes"
    );
    assert_eq!(&sector[510..], &[0x55, 0xaa]);
    Some(sector)
}
