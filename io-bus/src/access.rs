//! Helpers for devices that keep their registers as integers and serve accesses of any
//! width and alignment.

/// Fills `data` with the little-endian bytes of `value` from byte `offset` on; bytes
/// past the eighth read as 0.
///
/// ```
/// let mut word = [0u8; 2];
/// io_bus::read_le(0x1122_3344, 1, &mut word);
/// assert_eq!(word, [0x33, 0x22]);
/// ```
pub fn read_le(value: u64, offset: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(offset + i).copied().unwrap_or(0);
    }
}

/// The little-endian value of `data` (at most 8 bytes are used).
///
/// ```
/// assert_eq!(io_bus::le_value(&[0x44, 0x33]), 0x3344);
/// ```
pub fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_bytes_read_zero_and_long_writes_are_cut() {
        let mut d = [0xaau8; 4];
        read_le(0x0102_0304_0506_0708, 6, &mut d);
        assert_eq!(d, [0x02, 0x01, 0, 0]);
        assert_eq!(
            le_value(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            0x0807_0605_0403_0201
        );
        assert_eq!(le_value(&[]), 0);
    }
}
