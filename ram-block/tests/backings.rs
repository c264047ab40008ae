//! The three backings (anonymous, memfd, a handed-in fd) and huge pages: shared memory
//! is visible through every mapping of it, fd mappings start at their offset, and bad
//! fds, offsets and sizes fail with errors that say what was wrong.

#![cfg(not(miri))] // memfd, files and mmap

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ram_block::{Backing, Error, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion};

const PAGE: u64 = 0x1000;

/// A file in the temp dir, removed on drop.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn with_len(tag: &str, len: u64) -> TempFile {
        let path = std::env::temp_dir().join(format!("ram-block-{tag}-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        TempFile { path, file }
    }
    fn fd(&self) -> OwnedFd {
        self.file.try_clone().unwrap().into()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn a_memfd_block_is_shared_with_whoever_maps_its_fd() {
    let ours = RamList::new();
    let block = RamBlock::new(
        "vhost.mem",
        GuestAddress(0),
        4 * PAGE,
        Backing::Memfd { huge_pages: false },
    )
    .unwrap();
    let (fd, offset) = block.shared_fd().expect("a memfd block exposes its fd");
    assert_eq!(offset, 0);
    assert_eq!(block.file_offset().map(|f| f.start()), Some(0)); // the same, vm-memory's way
    // The other process (a vhost-user backend) gets the fd over its socket and maps it;
    // here a second list maps a duplicate through `Backing::Fd`, at another guest address.
    let peer_fd = fd.try_clone_to_owned().unwrap();
    let our_host = block.host_address();
    ours.add(block).unwrap();
    let peer = RamList::new();
    let peer_block = RamBlock::new(
        "peer",
        GuestAddress(0x1000_0000),
        4 * PAGE,
        Backing::Fd {
            fd: peer_fd,
            offset: 0,
        },
    );
    peer.add(peer_block.unwrap()).unwrap();

    let (a, b) = (ours.memory(), peer.memory());
    assert_ne!(
        our_host,
        b.find(GuestAddress(0x1000_0000)).unwrap().host_address()
    ); // two mappings
    a.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x3008))
        .unwrap();
    assert_eq!(
        b.read_obj::<u64>(GuestAddress(0x1000_3008)).unwrap(),
        0x1122_3344_5566_7788
    );
    b.write_slice(b"from the peer", GuestAddress(0x1000_0100))
        .unwrap();
    let mut buf = [0u8; 13];
    a.read_slice(&mut buf, GuestAddress(0x100)).unwrap();
    assert_eq!(&buf, b"from the peer");
}

#[test]
fn an_fd_block_maps_the_file_from_its_offset_shared() {
    let file = TempFile::with_len("offset", 4 * PAGE);
    for page in 0..4u64 {
        file.file
            .write_all_at(&[page as u8 + 1; PAGE as usize], page * PAGE)
            .unwrap();
    }
    let ram = RamList::new();
    let block = RamBlock::new(
        "file",
        GuestAddress(0x8000),
        2 * PAGE,
        Backing::Fd {
            fd: file.fd(),
            offset: PAGE,
        },
    );
    ram.add(block.unwrap()).unwrap();
    let mem = ram.memory();
    // Guest 0x8000 is file page 1, guest 0x9fff the last byte of file page 2.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 2);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x9fff)).unwrap(), 3);
    assert!(mem.read_obj::<u8>(GuestAddress(0xa000)).is_err());
    // Guest writes reach the file (MAP_SHARED), and file writes reach the guest.
    mem.write_obj(0xeeu8, GuestAddress(0x8010)).unwrap();
    let mut byte = [0u8];
    file.file.read_exact_at(&mut byte, PAGE + 0x10).unwrap();
    assert_eq!(byte, [0xee]);
    file.file.write_all_at(&[0x77], 2 * PAGE + 5).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x9005)).unwrap(), 0x77);
    let region = mem.find(GuestAddress(0x8000)).unwrap();
    assert_eq!(region.file_offset().unwrap().start(), PAGE);
    assert_eq!(region.is_hugetlbfs(), Some(false));
}

#[test]
fn bad_fds_offsets_and_sizes_are_refused_with_the_reason() {
    let file = TempFile::with_len("errors", 2 * PAGE);
    let fd_block = |offset, size| {
        RamBlock::new(
            "f",
            GuestAddress(0),
            size,
            Backing::Fd {
                fd: file.fd(),
                offset,
            },
        )
    };

    let err = fd_block(100, PAGE).unwrap_err();
    assert!(
        matches!(err, Error::BadFileOffset { offset: 100, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("file offset 0x64 is not a multiple of the page size"),
        "{err}"
    );
    let err = fd_block(1 << 63, PAGE).unwrap_err();
    assert!(matches!(err, Error::BadFileOffset { .. }), "{err}");
    // The file has 2 pages: mapping past its end would make guest accesses raise SIGBUS.
    let err = fd_block(PAGE, 2 * PAGE).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FileTooSmall {
                file_size: 0x2000,
                needed: 0x3000,
                ..
            }
        ),
        "{err}"
    );
    assert!(fd_block(PAGE, PAGE).is_ok());

    // A read-only fd cannot be mapped shared and writable.
    let read_only: OwnedFd = File::open(&file.path).unwrap().into();
    let err = RamBlock::new(
        "ro",
        GuestAddress(0),
        PAGE,
        Backing::Fd {
            fd: read_only,
            offset: 0,
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Os { op: "mmap", .. }), "{err}");
    assert!(
        err.to_string().starts_with("RAM block \"ro\": mmap failed"),
        "{err}"
    );
}

#[test]
fn a_memfd_cannot_be_shrunk_under_us() {
    let block = RamBlock::new(
        "sealed",
        GuestAddress(0),
        2 * PAGE,
        Backing::Memfd { huge_pages: false },
    )
    .unwrap();
    let (fd, _) = block.shared_fd().unwrap();
    // A peer that truncated the memfd would make our accesses fault (SIGBUS); the seal
    // makes its ftruncate fail instead.
    let peer = File::from(fd.try_clone_to_owned().unwrap());
    assert!(peer.set_len(PAGE).is_err());
    block
        .volatile_slice()
        .write_obj(1u8, 2 * PAGE as usize - 1)
        .unwrap();
}

#[test]
fn huge_pages_work_or_fail_with_a_clear_error() {
    let huge = ram_block::huge_page_size();
    for backing in [
        Backing::Anonymous { huge_pages: true },
        Backing::Memfd { huge_pages: true },
    ] {
        let err = RamBlock::new("odd", GuestAddress(0), huge + PAGE, backing).unwrap_err();
        assert!(matches!(err, Error::HugePageMisaligned { .. }), "{err}");
    }

    for (kind, backing) in [
        ("anonymous", Backing::Anonymous { huge_pages: true }),
        ("memfd", Backing::Memfd { huge_pages: true }),
    ] {
        match RamBlock::new("huge", GuestAddress(0), huge, backing) {
            Ok(block) => {
                assert!(block.huge_pages());
                assert_eq!(block.is_hugetlbfs(), Some(true));
                block
                    .volatile_slice()
                    .write_obj(0x5au8, huge as usize - 1)
                    .unwrap();
                assert_eq!(
                    block
                        .volatile_slice()
                        .read_obj::<u8>(huge as usize - 1)
                        .unwrap(),
                    0x5a
                );
                eprintln!("huge pages: a {kind} block of one {huge:#x}-byte huge page works");
            }
            Err(err @ Error::HugePagesUnavailable { .. }) => {
                let message = err.to_string();
                assert!(
                    message.contains("no huge pages") && message.contains("vm.nr_hugepages"),
                    "{message}"
                );
                eprintln!(
                    "\n*** SKIP: huge pages ({kind}): this machine has no huge pages reserved \
                     (HugePages_Free = {}); only the error path was tested. To run the real \
                     test: sysctl vm.nr_hugepages=2\n*** error was: {message}\n",
                    ram_block::free_huge_pages()
                );
            }
            Err(err) => panic!("huge page {kind} block failed with an unexpected error: {err}"),
        }
    }
}
