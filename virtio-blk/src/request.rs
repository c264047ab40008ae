//! Turning an untrusted descriptor chain into a virtio-blk request.
//!
//! Every length and address comes from the guest: the chain is walked by virtio-queue
//! (which bounds its length and checks indirect tables), readable descriptors must come
//! before writable ones, the header may span descriptors, and each sector range is
//! checked against the capacity with overflow checks. Every descriptor must lie in
//! guest memory, or the request fails before any I/O. A chain with no writable byte
//! cannot carry a status, and a chain with a readable descriptor after a writable one
//! must not get one (its last buffer is the driver's, lent to be read): both are
//! returned to the driver with a used length of 0.

use block_dma::SgList;
use virtio_core::Desc;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::config::*;

/// What the device must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read `data.len()` bytes at byte `offset` into `data`.
    Read {
        /// Byte offset in the disk.
        offset: u64,
        /// Guest buffers.
        data: SgList,
    },
    /// Write `data` at byte `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Guest buffers.
        data: SgList,
    },
    /// Flush.
    Flush,
    /// Copy the device ID into `data` (at most 20 bytes).
    GetId {
        /// Guest buffers.
        data: SgList,
    },
    /// Discard a byte range.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Zero a byte range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// May deallocate.
        unmap: bool,
    },
    /// Complete at once with this status.
    Status(u8),
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// Where the status byte goes (`None`: the chain has no writable byte).
    pub status: Option<u64>,
    /// Device-writable bytes in the chain (the used length reported on completion).
    pub writable: u32,
}

/// What the parser needs to know about the disk.
#[derive(Clone, Copy, Debug)]
pub struct DiskLimits {
    /// Size in bytes (a multiple of 512).
    pub size: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Discard offered.
    pub discard: bool,
    /// Write-zeroes offered.
    pub write_zeroes: bool,
}

/// Splits `[from, from + len)` bytes of the concatenated `descs` into an SgList.
fn sub_sg(descs: &[Desc], mut from: u64, mut len: u64) -> SgList {
    let mut sg = SgList::new();
    for d in descs {
        let dlen = u64::from(d.len);
        if from >= dlen {
            from -= dlen;
            continue;
        }
        let n = (dlen - from).min(len);
        sg.push(d.addr.wrapping_add(from), n);
        len -= n;
        from = 0;
        if len == 0 {
            break;
        }
    }
    sg
}

/// Reads `buf.len()` bytes at byte `from` of the concatenated `descs`.
fn read_at<M: GuestMemory>(mem: &M, descs: &[Desc], from: u64, buf: &mut [u8]) -> bool {
    let mut done = 0;
    for e in sub_sg(descs, from, buf.len() as u64).entries() {
        let n = e.len as usize;
        if mem
            .read_slice(&mut buf[done..done + n], GuestAddress(e.addr))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Parses one chain.
pub fn parse<M: GuestMemory>(mem: &M, descs: &[Desc], disk: &DiskLimits) -> Request {
    let first_writable = descs.iter().position(|d| d.write).unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(first_writable);
    // Readable after writable: a malformed chain (QEMU breaks the device). Its tail may
    // end in a buffer the driver lent us only to read: no status byte is written there,
    // and it is returned with a used length of 0.
    if writable.iter().any(|d| !d.write) {
        return Request {
            action: Action::Status(S_IOERR),
            status: None,
            writable: 0,
        };
    }
    let writable_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
    let readable_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    let status = (writable_len > 0)
        .then(|| writable.iter().rev().find(|d| d.len > 0))
        .flatten()
        // A descriptor that wraps the address space has no last byte in it.
        .and_then(|d| d.addr.checked_add(u64::from(d.len) - 1));
    let writable_u32 = u32::try_from(writable_len).unwrap_or(u32::MAX);
    let done = |action| Request {
        action,
        status,
        writable: writable_u32,
    };
    if status.is_none() {
        return done(Action::Status(S_IOERR));
    }
    // The whole chain must lie in guest memory before anything is submitted: a
    // transfer goes out in several submissions when it is long, and a bad last buffer
    // found after the first one would leave a partial write in the image (QEMU maps the
    // whole chain when it pops it).
    if !descs
        .iter()
        .all(|d| mem.check_range(GuestAddress(d.addr), d.len as usize, Permissions::ReadWrite))
    {
        return done(Action::Status(S_IOERR));
    }
    let mut header = [0u8; 16];
    if readable_len < 16 || !read_at(mem, readable, 0, &mut header) {
        return done(Action::Status(S_IOERR));
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let in_data = writable_len - 1; // before the status byte
    let out_data = readable_len - 16;
    let range_ok = |offset: Option<u64>, len: u64| {
        offset
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= disk.size)
    };
    let offset = sector.checked_mul(512);
    match kind {
        T_IN => {
            if in_data % 512 != 0 || !range_ok(offset, in_data) {
                return done(Action::Status(S_IOERR));
            }
            done(Action::Read {
                offset: offset.unwrap_or(0),
                data: sub_sg(writable, 0, in_data),
            })
        }
        T_OUT => {
            if disk.read_only || out_data % 512 != 0 || !range_ok(offset, out_data) {
                return done(Action::Status(S_IOERR));
            }
            done(Action::Write {
                offset: offset.unwrap_or(0),
                data: sub_sg(readable, 16, out_data),
            })
        }
        T_FLUSH => done(Action::Flush),
        T_GET_ID => done(Action::GetId {
            data: sub_sg(writable, 0, in_data.min(ID_BYTES as u64)),
        }),
        T_DISCARD | T_WRITE_ZEROES => {
            let is_discard = kind == T_DISCARD;
            if disk.read_only {
                return done(Action::Status(S_IOERR));
            }
            if (is_discard && !disk.discard) || (!is_discard && !disk.write_zeroes) {
                return done(Action::Status(S_UNSUPP));
            }
            // One segment (we advertise max_*_seg = 1), 16 bytes.
            let mut seg = [0u8; 16];
            if out_data != 16 || !read_at(mem, readable, 16, &mut seg) {
                return done(Action::Status(S_UNSUPP));
            }
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
            let num = u32::from_le_bytes(seg[8..12].try_into().unwrap());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());
            let allowed = if is_discard {
                0
            } else {
                WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return done(Action::Status(S_UNSUPP));
            }
            let offset = sector.checked_mul(512);
            let len = u64::from(num) * 512;
            if num > MAX_DISCARD_SECTORS || !range_ok(offset, len) {
                return done(Action::Status(S_IOERR));
            }
            let offset = offset.unwrap_or(0);
            if is_discard {
                done(Action::Discard { offset, len })
            } else {
                done(Action::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & WRITE_ZEROES_FLAG_UNMAP != 0,
                })
            }
        }
        _ => done(Action::Status(S_UNSUPP)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ram_block::{Backing, RamBlock, RamList};

    const DISK: DiskLimits = DiskLimits {
        size: 1 << 20,
        read_only: false,
        discard: true,
        write_zeroes: true,
    };

    fn ram() -> RamList {
        let ram = RamList::new();
        ram.add(
            RamBlock::new(
                "ram",
                GuestAddress(0),
                1 << 20,
                Backing::Memfd { huge_pages: false },
            )
            .unwrap(),
        )
        .unwrap();
        ram
    }

    fn read_chain(data_addr: u64) -> [Desc; 3] {
        [
            Desc {
                addr: 0x1000,
                len: 16,
                write: false,
            },
            Desc {
                addr: data_addr,
                len: 512,
                write: true,
            },
            Desc {
                addr: 0x3000,
                len: 1,
                write: true,
            },
        ]
    }

    #[test]
    fn a_read_becomes_a_read_of_its_sectors() {
        let ram = ram();
        let mem = ram.memory();
        mem.write_obj(T_IN, GuestAddress(0x1000)).unwrap();
        mem.write_obj(3u64, GuestAddress(0x1008)).unwrap();
        let req = parse(&*mem, &read_chain(0x2000), &DISK);
        assert_eq!(req.status, Some(0x3000));
        assert_eq!(req.writable, 513);
        let Action::Read { offset, data } = req.action else {
            panic!("{:?}", req.action)
        };
        assert_eq!(offset, 3 * 512);
        assert_eq!(data.len(), 512);
    }

    #[test]
    fn a_chain_partly_outside_memory_fails_before_any_io() {
        let ram = ram();
        let mem = ram.memory();
        mem.write_obj(T_IN, GuestAddress(0x1000)).unwrap();
        let req = parse(&*mem, &read_chain((1 << 20) - 256), &DISK);
        assert_eq!(req.action, Action::Status(S_IOERR));
    }

    /// Found by the `chains` fuzz target: a device-readable descriptor after the
    /// writable ones was taken for the status byte (the device wrote into a buffer the
    /// driver only lent it to read) and counted in the used length.
    #[test]
    fn a_readable_descriptor_after_a_writable_one_is_never_written() {
        let ram = ram();
        let mem = ram.memory();
        mem.write_obj(T_IN, GuestAddress(0x1000)).unwrap();
        let mut chain = read_chain(0x2000).to_vec();
        chain.push(Desc {
            addr: 0x4000,
            len: 16,
            write: false,
        });
        let req = parse(&*mem, &chain, &DISK);
        assert_eq!(req.action, Action::Status(S_IOERR));
        assert_eq!(req.status, None, "no status byte in a malformed chain");
        assert_eq!(req.writable, 0, "nothing written, nothing reported");
    }

    /// Found by the `chains` fuzz target: a last writable descriptor that wraps the
    /// address space put the status byte at the bottom of guest memory, outside the
    /// chain.
    #[test]
    fn a_status_descriptor_that_wraps_gets_no_status_byte() {
        let ram = ram();
        let mem = ram.memory();
        mem.write_obj(T_IN, GuestAddress(0x1000)).unwrap();
        let mut chain = read_chain(0x2000);
        chain[2] = Desc {
            addr: u64::MAX - 15,
            len: 32,
            write: true,
        };
        let req = parse(&*mem, &chain, &DISK);
        assert_eq!(req.action, Action::Status(S_IOERR));
        assert_eq!(
            req.status, None,
            "the status byte would land outside the chain"
        );
    }

    #[test]
    fn a_chain_without_a_writable_byte_has_no_status() {
        let ram = ram();
        let req = parse(&*ram.memory(), &read_chain(0x2000)[..1], &DISK);
        assert_eq!(req.status, None);
        assert_eq!(req.writable, 0);
    }
}
