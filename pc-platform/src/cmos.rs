//! The MC146818 CMOS RAM and real-time clock at 0x70/0x71, with QEMU's memory-size
//! fields (pc_cmos_init) and a clock read from the host's UTC time.
//!
//! Guest writes to the time registers are accepted and ignored (the clock always
//! follows the host); register B's binary/BCD and 12/24-hour bits are honoured.
//! No RTC interrupts are generated (SeaBIOS and Linux do not need them to boot).

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use io_bus::BusDevice;

/// The index port; the data port follows it.
pub const CMOS_BASE: u16 = 0x70;

const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
const CENTURY: usize = 0x32;

/// The RAM layout the firmware reads from CMOS.
#[derive(Clone, Copy, Debug)]
pub struct CmosLayout {
    /// RAM below 4 GiB, in bytes.
    pub below_4g: u64,
    /// RAM above 4 GiB, in bytes.
    pub above_4g: u64,
    /// Number of vCPUs.
    pub cpus: u32,
}

/// The CMOS device.
pub struct Cmos {
    state: Mutex<State>,
}

struct State {
    index: usize,
    ram: [u8; 128],
    initial: [u8; 128],
}

impl Cmos {
    /// CMOS contents for this machine, as QEMU's `pc_cmos_init` writes them.
    pub fn new(layout: CmosLayout) -> Cmos {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26;
        ram[REG_B] = REG_B_24H;
        ram[REG_D] = 0x80; // valid RAM and time
        // Base memory: 640 KiB.
        ram[0x15] = 0x80;
        ram[0x16] = 0x02;
        // Extended memory above 1 MiB in KiB, capped at 65535.
        let ext_kib = (layout.below_4g / 1024).saturating_sub(1024).min(0xffff) as u16;
        ram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        ram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        // Memory between 16 MiB and 4 GiB in 64 KiB units, capped at 65535.
        let ext2 = (layout.below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        ram[0x34..0x36].copy_from_slice(&ext2.to_le_bytes());
        // Memory above 4 GiB in 64 KiB units, 3 bytes.
        let high = (layout.above_4g >> 16).to_le_bytes();
        ram[0x5b..0x5e].copy_from_slice(&high[..3]);
        // vCPUs - 1 (SeaBIOS waits for this many APs to answer its SIPI).
        ram[0x5f] = layout.cpus.saturating_sub(1).min(255) as u8;
        // Equipment byte: FPU and display bits as QEMU sets them; boot order
        // registers 0x3d/0x38: hard disk first (SeaBIOS prefers fw_cfg's bootorder).
        ram[0x14] = 0x02 | 0x04;
        ram[0x3d] = 0x02;
        ram[0x38] = 0x01;
        Cmos {
            state: Mutex::new(State {
                index: 0,
                ram,
                initial: ram,
            }),
        }
    }

    /// Sets the boot device registers 0x3d and 0x38 (QEMU's `set_boot_dev`) to `now`
    /// for the first boot and to `after_reset` for every boot after a reset (QEMU's
    /// `-boot once=` restores `order=` at reset).
    pub fn set_boot_registers(&self, now: [u8; 2], after_reset: [u8; 2]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        [s.ram[0x3d], s.ram[0x38]] = now;
        [s.initial[0x3d], s.initial[0x38]] = after_reset;
    }

    /// Power-on contents again (the memory sizes stay).
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.ram = s.initial;
        s.index = 0;
    }

    /// The register `index` as the guest reads it.
    fn read_register(s: &State, index: usize) -> u8 {
        let b = s.ram[REG_B];
        let encode = |v: u32| -> u8 {
            let v = v as u8;
            if b & REG_B_BINARY != 0 {
                v
            } else {
                ((v / 10) << 4) | (v % 10)
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (year, month, day) = civil_from_days((now / 86400) as i64);
        let secs = (now % 86400) as u32;
        match index {
            0x00 => encode(secs % 60),
            0x02 => encode(secs / 60 % 60),
            0x04 => {
                let hour = secs / 3600;
                if b & REG_B_24H != 0 {
                    encode(hour)
                } else {
                    let pm = if hour >= 12 { 0x80 } else { 0 };
                    encode((hour + 11) % 12 + 1) | pm
                }
            }
            // 1970-01-01 was a Thursday; Sunday is 1.
            0x06 => encode(((now / 86400 + 4) % 7 + 1) as u32),
            0x07 => encode(day),
            0x08 => encode(month),
            0x09 => encode((year % 100) as u32),
            CENTURY => encode((year / 100) as u32),
            REG_A => s.ram[REG_A] & 0x7f, // never "update in progress"
            REG_C => 0,                   // no interrupt pending
            i => s.ram[i],
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl BusDevice for Cmos {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        data.fill(0xff);
        if offset == 1 {
            if let Some(d) = data.first_mut() {
                *d = Self::read_register(&s, s.index);
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 masks NMIs; the index is 7 bits.
            0 => s.index = usize::from(value & 0x7f),
            1 => {
                let index = s.index;
                match index {
                    0x00..=0x09 | REG_C | REG_D => {} // the clock follows the host
                    REG_A => s.ram[REG_A] = value & 0x7f,
                    _ => s.ram[index] = value,
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cmos: &Cmos, index: u8) -> u8 {
        cmos.write(0, &[index]);
        let mut b = [0];
        cmos.read(1, &mut b);
        b[0]
    }

    #[test]
    fn memory_fields_follow_qemu() {
        let cmos = Cmos::new(CmosLayout {
            below_4g: 0xe000_0000,
            above_4g: 0x2000_0000,
            cpus: 4,
        });
        let ext2 = u16::from(read(&cmos, 0x34)) | u16::from(read(&cmos, 0x35)) << 8;
        assert_eq!(u64::from(ext2), (0xe000_0000 - (16 << 20)) >> 16);
        assert_eq!(read(&cmos, 0x30), 0xff);
        assert_eq!(read(&cmos, 0x31), 0xff);
        assert_eq!(read(&cmos, 0x5b), 0x00);
        assert_eq!(read(&cmos, 0x5c), 0x20);
        assert_eq!(read(&cmos, 0x5d), 0x00);
        assert_eq!(read(&cmos, 0x5f), 3);
        assert_eq!(read(&cmos, 0x8d), 0x80); // NMI bit masked off the index
    }

    #[test]
    fn clock_is_bcd_and_plausible() {
        let cmos = Cmos::new(CmosLayout {
            below_4g: 128 << 20,
            above_4g: 0,
            cpus: 1,
        });
        let bcd = |v: u8| (v >> 4) * 10 + (v & 0xf);
        assert!(bcd(read(&cmos, 0x00)) < 60);
        assert!((1..=12).contains(&bcd(read(&cmos, 0x08))));
        assert!(bcd(read(&cmos, 0x32)) >= 20);
        assert_eq!(read(&cmos, 0x0a) & 0x80, 0);
        cmos.write(0, &[0x0b]);
        cmos.write(1, &[REG_B_24H | REG_B_BINARY]);
        assert!(read(&cmos, 0x00) < 60);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
