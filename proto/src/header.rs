//! The fixed 48-byte datagram header, in network byte order.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `"MC"` |
//! | 2 | 1 | wire version (2) |
//! | 3 | 1 | flags: bit 0 `ENCRYPTED`, other bits reserved (0) |
//! | 4 | 1 | key id (sealed: fingerprint of the sealing key; plaintext: 0) |
//! | 5 | 1 | reserved (0) |
//! | 6 | 2 | fragment index |
//! | 8 | 2 | fragment count (>= 1) |
//! | 10 | 4 | cluster id: crc32 of `cluster_name` |
//! | 14 | 8 | sender node id (non-zero) |
//! | 22 | 8 | packet number (per sender, from 1, never reused) |
//! | 30 | 8 | message id (shared by all fragments of one message) |
//! | 38 | 8 | send time: sender's wall clock, ms since the Unix epoch (replay horizon) |
//! | 46 | 2 | reserved (0) |
//!
//! Fields add up to 46 bytes; the last two bytes are reserved so the header is a round 48 bytes
//! and can grow a field without a new wire version.

use super::drop::DropReason;
use super::version::NodeId;

/// Bytes in every header.
pub const HEADER_LEN: usize = 48;
/// The first two bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"MC";
/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 5;
/// Flag bit: the body is sealed (AES-256-GCM-SIV) rather than plaintext with a crc32.
pub const FLAG_ENCRYPTED: u8 = 0b0000_0001;

/// A decoded header. Every value of this type satisfies the structural rules checked by
/// [`Header::decode`] (non-zero node id and packet number, `frag_index < frag_count`, ...).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct Header {
    /// The body is sealed with a keyring key.
    pub encrypted: bool,
    /// Which key sealed the body (0 in plaintext).
    pub key_id: u8,
    /// 0-based index of this fragment in its message.
    pub frag_index: u16,
    /// Fragments in the message (>= 1).
    pub frag_count: u16,
    /// crc32 of the sender's `cluster_name`.
    pub cluster_id: u32,
    /// The sending node.
    pub sender: NodeId,
    /// Per-sender datagram counter: starts at 1, never reused within a process.
    pub packet_number: u64,
    /// Per-sender message counter; all fragments of one message share it.
    pub message_id: u64,
    /// The sender's wall clock when it sealed the datagram, ms since the Unix epoch
    /// (authenticated in sealed mode; receivers refuse datagrams older than the replay horizon).
    pub sent_ms: u64,
}

impl Header {
    /// The 40 header bytes.
    ///
    /// ```
    /// use mccache_proto::header::{Header, HEADER_LEN};
    /// use mccache_proto::version::NodeId;
    /// let h = Header { encrypted: true, key_id: 7, frag_index: 1, frag_count: 3,
    ///                  cluster_id: 42, sender: NodeId(9), packet_number: 5, message_id: 2,
    ///                  sent_ms: 1_700_000_000_000 };
    /// let bytes = h.encode();
    /// assert_eq!(bytes.len(), HEADER_LEN);
    /// assert_eq!(Header::decode(&bytes), Ok(h));
    /// ```
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = WIRE_VERSION;
        b[3] = if self.encrypted { FLAG_ENCRYPTED } else { 0 };
        b[4] = self.key_id;
        b[5] = 0;
        b[6..8].copy_from_slice(&self.frag_index.to_be_bytes());
        b[8..10].copy_from_slice(&self.frag_count.to_be_bytes());
        b[10..14].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[14..22].copy_from_slice(&self.sender.0.to_be_bytes());
        b[22..30].copy_from_slice(&self.packet_number.to_be_bytes());
        b[30..38].copy_from_slice(&self.message_id.to_be_bytes());
        b[38..46].copy_from_slice(&self.sent_ms.to_be_bytes());
        b
    }

    /// Parses the header at the start of `datagram`. Never panics; rejects anything that is not
    /// a structurally valid header of this wire version. It does not authenticate anything.
    pub fn decode(datagram: &[u8]) -> Result<Header, DropReason> {
        let Some(b) = datagram.first_chunk::<HEADER_LEN>() else {
            // Report a foreign short packet as such rather than as "too short".
            if datagram.len() >= 2 && datagram[0..2] != MAGIC {
                return Err(DropReason::BadMagic);
            }
            return Err(DropReason::TooShort);
        };
        if b[0..2] != MAGIC {
            return Err(DropReason::BadMagic);
        }
        if b[2] != WIRE_VERSION {
            return Err(DropReason::BadVersion);
        }
        let flags = b[3];
        if flags & !FLAG_ENCRYPTED != 0 || b[5] != 0 || b[46] != 0 || b[47] != 0 {
            return Err(DropReason::Malformed);
        }
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        let key_id = b[4];
        let frag_index = be_u16(b, 6);
        let frag_count = be_u16(b, 8);
        let sender = NodeId(be_u64(b, 14));
        let packet_number = be_u64(b, 22);
        if (!encrypted && key_id != 0)
            || frag_count == 0
            || frag_index >= frag_count
            || sender.0 == 0
            || packet_number == 0
        {
            return Err(DropReason::Malformed);
        }
        Ok(Header {
            encrypted,
            key_id,
            frag_index,
            frag_count,
            cluster_id: u32::from_be_bytes([b[10], b[11], b[12], b[13]]),
            sender,
            packet_number,
            message_id: be_u64(b, 30),
            sent_ms: be_u64(b, 38),
        })
    }
}

/// The cluster id carried in every header: crc32 of the cluster name's UTF-8 bytes.
///
/// It is only a cheap filter; the name itself is bound into authentication (see
/// [`crate::crypto`]).
pub fn cluster_id(cluster_name: &str) -> u32 {
    crc32fast::hash(cluster_name.as_bytes())
}

fn be_u16(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            encrypted: false,
            key_id: 0,
            frag_index: 0,
            frag_count: 1,
            cluster_id: cluster_id("t"),
            sender: NodeId(0x0102_0304_0506_0708),
            packet_number: 1,
            message_id: 1,
            sent_ms: 7,
        }
    }

    #[test]
    fn layout_is_network_byte_order() {
        let b = sample().encode();
        assert_eq!(&b[0..4], &[b'M', b'C', WIRE_VERSION, 0]);
        assert_eq!(&b[8..10], &[0, 1]);
        assert_eq!(&b[14..22], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[22..30], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&b[38..46], &[0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn rejects_structural_errors() {
        let good = sample().encode();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            Header::decode(&b)
        };
        assert_eq!(with(0, b'X'), Err(DropReason::BadMagic));
        assert_eq!(with(2, WIRE_VERSION + 1), Err(DropReason::BadVersion));
        assert_eq!(with(2, WIRE_VERSION - 1), Err(DropReason::BadVersion));
        assert_eq!(with(3, 0x80), Err(DropReason::Malformed));
        assert_eq!(with(4, 1), Err(DropReason::Malformed)); // key id in plaintext
        assert_eq!(with(5, 1), Err(DropReason::Malformed));
        assert_eq!(with(47, 1), Err(DropReason::Malformed));
        assert_eq!(with(9, 0), Err(DropReason::Malformed)); // frag count 0
        assert_eq!(with(7, 1), Err(DropReason::Malformed)); // index 1 >= count 1
        assert_eq!(with(29, 0), Err(DropReason::Malformed)); // packet number 0
        assert_eq!(Header::decode(&good[..47]), Err(DropReason::TooShort));
        assert_eq!(Header::decode(&[]), Err(DropReason::TooShort));
        assert_eq!(Header::decode(b"GET / HTTP"), Err(DropReason::BadMagic));
    }
}
