//! IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data (ATA/ATAPI-8 ACS, section 7.16/7.17).

/// The most sectors READ/WRITE MULTIPLE moves per DRQ block (word 47).
pub const MAX_MULT_SECTORS: u16 = 16;

/// What the strings of an IDENTIFY block say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strings {
    /// Serial number (20 characters, word 10).
    pub serial: String,
    /// Firmware revision (8 characters, word 23).
    pub firmware: String,
    /// Model number (40 characters, word 27).
    pub model: String,
}

/// The parameters of an ATA disk's IDENTIFY DEVICE block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiskParams {
    pub sectors: u64,
    pub cylinders: u16,
    pub heads: u16,
    pub spt: u16,
    pub mult: u16,
    pub write_cache: bool,
    pub xfer_mode: u8,
}

struct Words([u16; 256]);

impl Words {
    fn put(&mut self, word: usize, value: u16) {
        self.0[word] = value;
    }

    /// An ATA string: space padded, two characters per word, the first in the high byte.
    fn string(&mut self, word: usize, chars: usize, s: &str) {
        let mut bytes = s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' ');
        for i in 0..chars / 2 {
            let hi = bytes.next().unwrap_or(b' ');
            let lo = bytes.next().unwrap_or(b' ');
            self.0[word + i] = u16::from_be_bytes([hi, lo]);
        }
    }

    /// Little-endian bytes with the integrity word (255): signature 0xA5 and a checksum
    /// that makes all 512 bytes sum to zero.
    fn finish(mut self) -> [u8; 512] {
        self.0[255] = 0x00a5;
        let mut out = [0u8; 512];
        for (i, w) in self.0.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        let sum = out[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        out[511] = sum.wrapping_neg();
        out
    }
}

/// Word 63 / word 88 with the selected multiword DMA / Ultra DMA mode marked.
fn dma_words(xfer_mode: u8) -> (u16, u16) {
    let mut mdma = 0x0007;
    let mut udma = 0x003f;
    match xfer_mode >> 3 {
        4 => mdma |= 1 << (8 + (xfer_mode & 7).min(2)),
        8 => udma |= 1 << (8 + (xfer_mode & 7).min(5)),
        _ => {}
    }
    (mdma, udma)
}

/// IDENTIFY DEVICE for a disk.
pub(crate) fn disk(p: &DiskParams, s: &Strings) -> [u8; 512] {
    let mut w = Words([0; 256]);
    let chs = u32::from(p.cylinders) * u32::from(p.heads) * u32::from(p.spt);
    let lba28 = p.sectors.min(0x0fff_ffff) as u32;
    w.put(0, 0x0040); // fixed device, not removable
    w.put(1, p.cylinders);
    w.put(3, p.heads);
    w.put(6, p.spt);
    w.string(10, 20, &s.serial);
    w.string(23, 8, &s.firmware);
    w.string(27, 40, &s.model);
    w.put(47, 0x8000 | MAX_MULT_SECTORS);
    // LBA, DMA, IORDY supported.
    w.put(49, (1 << 11) | (1 << 9) | (1 << 8));
    w.put(50, 0x4000);
    w.put(51, 0x200);
    w.put(52, 0x200);
    w.put(53, 0x0007); // words 54-58, 64-70 and 88 are valid
    w.put(54, p.cylinders);
    w.put(55, p.heads);
    w.put(56, p.spt);
    w.put(57, chs as u16);
    w.put(58, (chs >> 16) as u16);
    if p.mult != 0 {
        w.put(59, 0x100 | p.mult);
    }
    w.put(60, lba28 as u16);
    w.put(61, (lba28 >> 16) as u16);
    let (mdma, udma) = dma_words(p.xfer_mode);
    w.put(63, mdma);
    w.put(64, 0x0003); // PIO 3 and 4
    for word in 65..=68 {
        w.put(word, 120);
    }
    w.put(80, 0x00f0); // ATA-4 .. ATA-7
    w.put(81, 0x0016);
    // NOP, write cache.
    w.put(82, (1 << 14) | (1 << 5));
    // FLUSH CACHE EXT, FLUSH CACHE, 48-bit addressing.
    w.put(83, (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10));
    w.put(84, 1 << 14);
    w.put(85, (1 << 14) | if p.write_cache { 1 << 5 } else { 0 });
    w.put(86, (1 << 13) | (1 << 12) | (1 << 10));
    w.put(87, 1 << 14);
    w.put(88, udma);
    w.put(93, (1 << 14) | (1 << 13) | 1);
    for i in 0..4 {
        w.put(100 + i, (p.sectors >> (16 * i)) as u16);
    }
    w.finish()
}

/// IDENTIFY PACKET DEVICE for a CD/DVD drive.
pub(crate) fn packet(s: &Strings, xfer_mode: u8) -> [u8; 512] {
    let mut w = Words([0; 256]);
    // ATAPI, CD-ROM device type, removable, DRQ within 50 us, 12-byte packets.
    w.put(0, (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5));
    w.string(10, 20, &s.serial);
    w.string(23, 8, &s.firmware);
    w.string(27, 40, &s.model);
    w.put(49, (1 << 9) | (1 << 8)); // LBA, DMA
    w.put(50, 0x4000);
    w.put(53, 0x0006);
    let (mdma, udma) = dma_words(xfer_mode);
    w.put(63, mdma);
    w.put(64, 0x0003);
    w.put(65, 0xb4);
    w.put(66, 0xb4);
    w.put(67, 0x12c);
    w.put(68, 0xb4);
    w.put(71, 30);
    w.put(72, 30);
    w.put(80, 0x001e);
    w.put(88, udma);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8; 512], i: usize) -> u16 {
        u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
    }

    fn params(sectors: u64) -> DiskParams {
        DiskParams {
            sectors,
            cylinders: 1024,
            heads: 16,
            spt: 63,
            mult: 0,
            write_cache: true,
            xfer_mode: 0x45,
        }
    }

    fn strings() -> Strings {
        Strings {
            serial: "QM00001".into(),
            firmware: "2.5+".into(),
            model: "QEMU HARDDISK".into(),
        }
    }

    #[test]
    fn strings_are_byte_swapped_and_space_padded() {
        let b = disk(&params(1 << 20), &strings());
        // Word 27 holds "QE": 'Q' in the high byte.
        assert_eq!(word(&b, 27), u16::from_be_bytes([b'Q', b'E']));
        assert_eq!(word(&b, 46), 0x2020);
        assert_eq!(word(&b, 10), u16::from_be_bytes([b'Q', b'M']));
        assert_eq!(word(&b, 23), u16::from_be_bytes([b'2', b'.']));
    }

    #[test]
    fn lba28_saturates_and_lba48_holds_the_full_count() {
        let big = (1u64 << 32) + 5;
        let b = disk(&params(big), &strings());
        assert_eq!(
            u32::from(word(&b, 60)) | u32::from(word(&b, 61)) << 16,
            0x0fff_ffff
        );
        let lba48: u64 = (0..4)
            .map(|i| u64::from(word(&b, 100 + i)) << (16 * i))
            .sum();
        assert_eq!(lba48, big);
        assert_ne!(word(&b, 83) & (1 << 10), 0, "48-bit feature set supported");
        assert_ne!(word(&b, 86) & (1 << 10), 0, "and enabled");
    }

    #[test]
    fn integrity_word_checksums_to_zero() {
        for b in [disk(&params(1000), &strings()), packet(&strings(), 0x22)] {
            assert_eq!(b[510], 0xa5);
            assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        }
    }

    #[test]
    fn selected_dma_mode_is_marked() {
        let mut p = params(1000);
        p.xfer_mode = 0x22; // MDMA 2
        let b = disk(&p, &strings());
        assert_eq!(word(&b, 63), 0x0407);
        assert_eq!(word(&b, 88), 0x003f);
        p.xfer_mode = 0x45; // UDMA 5
        let b = disk(&p, &strings());
        assert_eq!(word(&b, 63), 0x0007);
        assert_eq!(word(&b, 88), 0x203f);
    }

    #[test]
    fn packet_device_word_0_says_atapi_cdrom_removable() {
        let b = packet(&strings(), 0);
        assert_eq!(word(&b, 0), 0x85c0);
        assert_eq!(word(&b, 0) >> 14, 2, "ATAPI");
        assert_eq!((word(&b, 0) >> 8) & 0x1f, 5, "CD/DVD");
    }
}
