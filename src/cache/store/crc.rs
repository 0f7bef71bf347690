//! crc32 (IEEE, the `crc32fast` checksum the protocol's digests and buckets are defined with)
//! for the short inputs of a write: a key, a value, a version. Slice-by-8 tables, inlined into
//! the write path; inputs from [`LONG`] bytes on go to `crc32fast` (carry-less multiplication),
//! which is faster there but costs a call and a few dozen instructions of setup per call, more
//! than a whole `u64` key takes here.
//!
//! The running value is the crc *register* (the checksum inverted): start from [`INIT`],
//! [`update`] with each piece, and [`finish`] to get what `crc32fast::hash` of the
//! concatenation returns.

/// The register before any byte.
pub(super) const INIT: u32 = !0;

/// Inputs at least this long are handed to `crc32fast`.
const LONG: usize = 64;

const POLY: u32 = 0xEDB8_8320;

/// `T[0]` is the byte-at-a-time table; `T[k][b]` is the crc of byte `b` followed by `k` zero
/// bytes (slice-by-8).
static T: [[u32; 256]; 8] = tables();

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

/// The register after `bytes`, from register `crc`.
#[inline]
pub(super) fn update(mut crc: u32, bytes: &[u8]) -> u32 {
    if bytes.len() >= LONG {
        return update_long(crc, bytes);
    }
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = T[7][(lo & 0xff) as usize]
            ^ T[6][((lo >> 8) & 0xff) as usize]
            ^ T[5][((lo >> 16) & 0xff) as usize]
            ^ T[4][(lo >> 24) as usize]
            ^ T[3][(hi & 0xff) as usize]
            ^ T[2][((hi >> 8) & 0xff) as usize]
            ^ T[1][((hi >> 16) & 0xff) as usize]
            ^ T[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = T[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cold]
#[inline(never)]
fn update_long(crc: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!crc);
    h.update(bytes);
    !h.finalize()
}

/// The checksum of everything fed to the register `crc`.
#[inline]
pub(super) fn finish(crc: u32) -> u32 {
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_crc32fast_for_every_length_and_split() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let d = &data[..len];
            assert_eq!(finish(update(INIT, d)), crc32fast::hash(d), "len {len}");
            // Fed in two pieces, short and long, as a write feeds key, value, version.
            for cut in [0, 1, len / 3, len.saturating_sub(9), len] {
                let cut = cut.min(len);
                let two = update(update(INIT, &d[..cut]), &d[cut..]);
                assert_eq!(finish(two), crc32fast::hash(d), "len {len} cut {cut}");
            }
        }
    }
}
