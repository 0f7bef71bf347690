//! Sealing and opening datagram bodies: AES-256-GCM-SIV (RFC 8452) with a keyring, or a crc32
//! in plaintext mode.
//!
//! * **Sealed** (keyring not empty): the first key seals, every key opens. The 96-bit nonce is
//!   `fold32(sender node id) (4, BE) ‖ packet number (8, BE)`, where `fold32` xors the two
//!   halves of the 64-bit id (see [`nonce`]); the associated data is the 48 header bytes
//!   followed by the cluster name, so a datagram of another cluster fails authentication even
//!   under the same key. Body = ciphertext ‖ 16-byte tag.
//! * **Plaintext** (empty keyring): body = payload ‖ crc32 (BE) over header ‖ cluster name ‖
//!   payload. This detects corruption and strays, not attackers.
//!
//! The header's key id is a one-byte *fingerprint* of the sealing key (a PRF output of the key,
//! see [`key_id`]), not an index into the keyring: nodes in the middle of a key rotation hold
//! their keys in different orders, and a fingerprint names the same key on all of them.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};

use super::drop::DropReason;
use super::header::{HEADER_LEN, Header};
use super::version::NodeId;

/// Bytes of the AES-GCM-SIV tag appended to a sealed body.
pub const TAG_LEN: usize = 16;
/// Bytes of the crc32 appended to a plaintext body.
pub const CRC_LEN: usize = 4;

/// Bytes of a datagram nonce.
const NONCE_LEN: usize = 12;

/// Domain-separation label for key fingerprints (v2: AES-256-GCM-SIV; v1 was XChaCha20-Poly1305).
const KEY_ID_LABEL: &[u8] = b"mccache key id v2";
/// Nonce used only to fingerprint keys. Its packet-number part is 0, which no datagram carries
/// (packet numbers start at 1 and headers with 0 are malformed), so it never seals traffic.
const KEY_ID_NONCE: [u8; NONCE_LEN] = [0; NONCE_LEN];

/// The keys of a node plus the cluster label they authenticate.
///
/// ```
/// use mccache_proto::crypto::Keyring;
/// use mccache_proto::header::{Header, HEADER_LEN, cluster_id};
/// use mccache_proto::version::NodeId;
///
/// let mut ring = Keyring::new(&[[7u8; 32]], "prod");
/// let header = Header { encrypted: true, key_id: ring.sealing_key_id().unwrap(),
///     frag_index: 0, frag_count: 1, cluster_id: cluster_id("prod"),
///     sender: NodeId(1), packet_number: 1, message_id: 1, sent_ms: 1_700_000_000_000 };
/// let mut datagram = header.encode().to_vec();
/// datagram.extend_from_slice(b"hello");
/// ring.seal(&mut datagram);
/// assert_ne!(&datagram[HEADER_LEN..HEADER_LEN + 5], b"hello");
/// assert_eq!(ring.open(&header, &datagram).unwrap(), b"hello");
/// ```
pub struct Keyring {
    keys: Vec<KeyEntry>,
    cluster_name: Box<[u8]>,
    /// Reused buffer for the associated data (header ‖ cluster name).
    aad: Vec<u8>,
}

struct KeyEntry {
    id: u8,
    cipher: LessSafeKey,
}

/// The AES-256-GCM-SIV cipher of `key`.
fn cipher(key: &[u8; 32]) -> LessSafeKey {
    // Invariant: AES-256-GCM-SIV takes exactly the 32 bytes the type guarantees.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, key).expect("a 32-byte AES-256 key"))
}

impl Keyring {
    /// A keyring; `keys[0]` seals, all keys open. No keys means plaintext mode.
    pub fn new(keys: &[[u8; 32]], cluster_name: &str) -> Keyring {
        let keys = keys
            .iter()
            .map(|k| KeyEntry {
                id: key_id(k),
                cipher: cipher(k),
            })
            .collect();
        let cluster_name: Box<[u8]> = cluster_name.as_bytes().into();
        let mut aad = Vec::with_capacity(HEADER_LEN + cluster_name.len());
        aad.extend_from_slice(&[0u8; HEADER_LEN]);
        aad.extend_from_slice(&cluster_name);
        Keyring {
            keys,
            cluster_name,
            aad,
        }
    }

    /// Whether datagrams are sealed (at least one key).
    pub fn is_encrypted(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key id to put in headers of sealed datagrams (`None` in plaintext mode).
    pub fn sealing_key_id(&self) -> Option<u8> {
        self.keys.first().map(|k| k.id)
    }

    /// Bytes [`Keyring::seal`] appends to a body: the tag or the crc.
    pub fn overhead(&self) -> usize {
        if self.is_encrypted() {
            TAG_LEN
        } else {
            CRC_LEN
        }
    }

    /// Seals `datagram` in place: it holds an encoded header followed by the payload; on return
    /// the payload is encrypted and the tag appended (or, in plaintext mode, the crc appended).
    ///
    /// The header must name this keyring's mode and sealing key id, and its `(sender, packet
    /// number)` should never have been sealed before under the same key. AES-GCM-SIV resists
    /// nonce misuse: a repeated nonce only shows that two identical (header, payload) pairs
    /// were identical, and the header holds the full sender id and packet number.
    pub fn seal(&mut self, datagram: &mut Vec<u8>) {
        debug_assert!(datagram.len() >= HEADER_LEN);
        let Some(key) = self.keys.first() else {
            let crc = plaintext_crc(
                &datagram[..HEADER_LEN],
                &self.cluster_name,
                &datagram[HEADER_LEN..],
            );
            datagram.extend_from_slice(&crc.to_be_bytes());
            return;
        };
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let nonce = nonce_from_header(header);
        self.aad[..HEADER_LEN].copy_from_slice(header);
        let tag = key
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.aad[..]),
                body,
            )
            // Invariant: AES-GCM-SIV only refuses plaintexts or associated data longer than
            // 2^36 bytes (64 GiB); callers seal single datagrams (< 64 KiB) with a short name.
            .expect("datagram body within AES-GCM-SIV length limit");
        datagram.extend_from_slice(tag.as_ref());
    }

    /// Authenticates and opens the body of `datagram`, whose already-decoded header is `header`.
    /// Returns the payload. The caller checks the cluster id before calling this.
    pub fn open(&mut self, header: &Header, datagram: &[u8]) -> Result<Vec<u8>, DropReason> {
        let Some(body) = datagram.get(HEADER_LEN..) else {
            return Err(DropReason::TooShort);
        };
        let head = &datagram[..HEADER_LEN];
        match (self.is_encrypted(), header.encrypted) {
            // We require authentication; an unsealed datagram is not authentic.
            (true, false) => Err(DropReason::AuthFailure),
            // We have no key to open it with.
            (false, true) => Err(DropReason::UnknownKeyId),
            (false, false) => {
                let Some(split) = body.len().checked_sub(CRC_LEN) else {
                    return Err(DropReason::TooShort);
                };
                let (payload, crc) = body.split_at(split);
                let expected = plaintext_crc(head, &self.cluster_name, payload);
                if crc != expected.to_be_bytes() {
                    return Err(DropReason::BadChecksum);
                }
                Ok(payload.to_vec())
            }
            (true, true) => {
                let Some(split) = body.len().checked_sub(TAG_LEN) else {
                    return Err(DropReason::TooShort);
                };
                let nonce = nonce_from_header(head);
                self.aad[..HEADER_LEN].copy_from_slice(head);
                let mut candidates = self
                    .keys
                    .iter()
                    .filter(|k| k.id == header.key_id)
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(DropReason::UnknownKeyId);
                }
                let mut buf = Vec::with_capacity(body.len());
                for key in candidates {
                    // Reset for each try: the buffer must hold the ciphertext and the tag,
                    // whatever a failed attempt left in it.
                    buf.clear();
                    buf.extend_from_slice(body);
                    let opened = key.cipher.open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&self.aad[..]),
                        &mut buf,
                    );
                    if opened.is_ok() {
                        // The plaintext is the body without its tag, decrypted in place.
                        buf.truncate(split);
                        return Ok(buf);
                    }
                }
                Err(DropReason::AuthFailure)
            }
        }
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .field("cluster_name", &String::from_utf8_lossy(&self.cluster_name))
            .finish()
    }
}

/// The one-byte key id of `key`: the first byte of the AES-256-GCM-SIV tag of an empty message
/// sealed under `key` with a reserved nonce (never used for traffic) and a fixed label. It
/// reveals nothing usable about the key, and every node computes the same id for the same key.
pub fn key_id(key: &[u8; 32]) -> u8 {
    let tag = cipher(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(KEY_ID_NONCE),
            Aad::from(KEY_ID_LABEL),
            &mut [],
        )
        // Invariant: an empty plaintext is always within the length limit.
        .expect("empty plaintext always seals");
    tag.as_ref()[0]
}

/// The 12-byte nonce of a datagram: `fold32(sender)` (BE) ‖ packet number (BE), where
/// `fold32(id) = (id >> 32) ^ (id & 0xFFFF_FFFF)`.
///
/// Within one process the packet number never repeats, so neither does the nonce. Two processes
/// under one key share nonces only if their ids fold to the same 32 bits; AES-GCM-SIV keeps
/// confidentiality and authenticity then, and their datagrams still differ in the associated
/// data (the header holds the full 64-bit id). docs/PROTOCOL.md ("Encryption") has the bounds.
pub fn nonce(sender: NodeId, packet_number: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&fold32(sender.0).to_be_bytes());
    n[4..].copy_from_slice(&packet_number.to_be_bytes());
    n
}

/// The nonce from encoded header bytes (sender at 14..22, packet number at 22..30).
fn nonce_from_header(header: &[u8]) -> [u8; NONCE_LEN] {
    let mut sender = [0u8; 8];
    sender.copy_from_slice(&header[14..22]);
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&fold32(u64::from_be_bytes(sender)).to_be_bytes());
    n[4..].copy_from_slice(&header[22..30]);
    n
}

/// The 32 nonce bits taken from a 64-bit sender id: its two halves xored, so every bit of the
/// id counts (ids are random, but a test or a hand-picked id may differ in either half only).
fn fold32(id: u64) -> u32 {
    // Truncation intended: the low half.
    ((id >> 32) ^ (id & 0xFFFF_FFFF)) as u32
}

fn plaintext_crc(header: &[u8], cluster_name: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(cluster_name);
    h.update(payload);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::cluster_id;

    fn header(ring: &Keyring, cluster: &str) -> Header {
        Header {
            encrypted: ring.is_encrypted(),
            key_id: ring.sealing_key_id().unwrap_or(0),
            frag_index: 0,
            frag_count: 1,
            cluster_id: cluster_id(cluster),
            sender: NodeId(0xABCD),
            packet_number: 77,
            message_id: 3,
            sent_ms: 1,
        }
    }

    fn sealed(ring: &mut Keyring, h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut d = h.encode().to_vec();
        d.extend_from_slice(payload);
        ring.seal(&mut d);
        d
    }

    #[test]
    fn nonce_layout() {
        let n = nonce(NodeId(0x0102030405060708), 0x1112131415161718);
        assert_eq!(&n[..4], &[1 ^ 5, 2 ^ 6, 3 ^ 7, 4 ^ 8]);
        assert_eq!(&n[4..], &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        // Ids that differ in only one half get different nonces.
        assert_ne!(nonce(NodeId(1), 5), nonce(NodeId(2), 5));
        assert_ne!(nonce(NodeId(1 << 32), 5), nonce(NodeId(2 << 32), 5));
        // Packet numbers start at 1, so no datagram uses the key-id nonce.
        assert_eq!(&KEY_ID_NONCE[4..], &[0; 8]);
        let h = Header {
            encrypted: true,
            key_id: 0,
            frag_index: 0,
            frag_count: 1,
            cluster_id: 0,
            sender: NodeId(0x0102030405060708),
            packet_number: 0x1112131415161718,
            message_id: 1,
            sent_ms: 1,
        };
        assert_eq!(nonce_from_header(&h.encode()), n);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_cipher_is_rfc_8452_aes_256_gcm_siv() {
        // RFC 8452, appendix C.2 (AEAD_AES_256_GCM_SIV): key 01 00.., nonce 03 00.., no
        // associated data; an empty plaintext, then 8 bytes.
        let mut key = [0u8; 32];
        key[0] = 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = 3;
        let seal = |plaintext: &mut [u8]| {
            cipher(&key)
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    plaintext,
                )
                .unwrap()
        };
        assert_eq!(
            hex(seal(&mut []).as_ref()),
            "07f5f4169bbf55a8400cd47ea6fd400f"
        );
        let mut body = [1, 0, 0, 0, 0, 0, 0, 0];
        let tag = seal(&mut body);
        assert_eq!(
            hex(&body) + &hex(tag.as_ref()),
            "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28"
        );
    }

    #[test]
    fn datagrams_and_key_ids_of_the_earlier_implementation_still_open() {
        // Sealed by mccache's first implementation (RustCrypto's `aes-gcm-siv` 0.11): the wire
        // format and the key fingerprints do not change with the AES-GCM-SIV library.
        assert_eq!(
            (key_id(&[1; 32]), key_id(&[3; 32]), key_id(&[0x42; 32])),
            (79, 204, 84)
        );
        let d = unhex(concat!(
            "4d430401cc000000000106b9df6f000000000000abcd000000000000004d0000000000000003",
            "00000000000000010000a83b670f164bc1cfe263406c78c3cc2c09e5b782702e1fabc49a8bbcc2",
            "0fca518b72b9a61292684c68bd0f0bdee6293e"
        ));
        let mut ring = Keyring::new(&[[3; 32]], "c");
        let h = header(&ring, "c");
        // The same header but for the wire version it was sealed under (4; the header is
        // authenticated, so a datagram of another version does not open as this one).
        let mut head = h.encode();
        assert_eq!((d[2], head[2]), (4, crate::header::WIRE_VERSION));
        head[2] = 4;
        assert_eq!(&d[..HEADER_LEN], &head[..]);
        assert_eq!(
            ring.open(&h, &d).unwrap(),
            b"a datagram sealed by mccache 0.1"
        );
        let mut again = head.to_vec();
        again.extend_from_slice(b"a datagram sealed by mccache 0.1");
        ring.seal(&mut again);
        assert_eq!(again, d);
        let mut now = h.encode().to_vec();
        now.extend_from_slice(&d[HEADER_LEN..]);
        assert!(ring.open(&h, &now).is_err(), "the version is authenticated");
    }

    #[test]
    fn key_ids_are_stable_and_differ_between_keys() {
        assert_eq!(key_id(&[1; 32]), key_id(&[1; 32]));
        let distinct: std::collections::HashSet<u8> =
            (0..=255u8).map(|b| key_id(&[b; 32])).collect();
        // 256 keys into 256 ids: a fingerprint, not a constant.
        assert!(distinct.len() > 100, "{}", distinct.len());
    }

    #[test]
    fn colliding_nonces_still_seal_distinct_ciphertexts() {
        // Two processes whose ids fold to the same 32 bits share nonces at equal packet
        // numbers. The full ids differ in the associated data, so the synthetic IVs (tags) and
        // the keystreams differ, and each datagram opens only as itself.
        let (a, b) = (NodeId(0x0000_0001_0000_0003), NodeId(0x0000_0002_0000_0000));
        assert_eq!(nonce(a, 9), nonce(b, 9));
        let mut ring = Keyring::new(&[[5; 32]], "c");
        let mut ha = header(&ring, "c");
        ha.sender = a;
        ha.packet_number = 9;
        let hb = Header { sender: b, ..ha };
        let payload = [0u8; 64];
        let da = sealed(&mut ring, &ha, &payload);
        let db = sealed(&mut ring, &hb, &payload);
        assert_ne!(da[HEADER_LEN..], db[HEADER_LEN..]);
        assert_eq!(ring.open(&ha, &da).unwrap(), payload);
        assert_eq!(ring.open(&hb, &db).unwrap(), payload);
        // A body spliced under the other sender's header does not open.
        let mut spliced = hb.encode().to_vec();
        spliced.extend_from_slice(&da[HEADER_LEN..]);
        assert_eq!(ring.open(&hb, &spliced), Err(DropReason::AuthFailure));
    }

    #[test]
    fn sealed_body_is_payload_plus_tag_and_hides_it() {
        let mut ring = Keyring::new(&[[3; 32]], "c");
        let h = header(&ring, "c");
        let d = sealed(&mut ring, &h, &[0u8; 100]);
        assert_eq!(d.len(), HEADER_LEN + 100 + TAG_LEN);
        assert_eq!(&d[..HEADER_LEN], &h.encode()[..]);
        assert!(d[HEADER_LEN..HEADER_LEN + 100].iter().any(|&b| b != 0));
        for i in HEADER_LEN..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                ring.open(&h, &bad),
                Err(DropReason::AuthFailure),
                "byte {i}"
            );
        }
    }

    #[test]
    fn cluster_label_is_authenticated() {
        let mut a = Keyring::new(&[[9; 32]], "blue");
        let mut b = Keyring::new(&[[9; 32]], "green");
        let h = header(&a, "blue");
        let d = sealed(&mut a, &h, b"payload");
        assert_eq!(a.open(&h, &d).unwrap(), b"payload");
        assert_eq!(b.open(&h, &d), Err(DropReason::AuthFailure));
    }

    #[test]
    fn plaintext_crc_detects_any_flip() {
        let mut ring = Keyring::new(&[], "c");
        let h = header(&ring, "c");
        let d = sealed(&mut ring, &h, b"abcdef");
        assert_eq!(ring.open(&h, &d).unwrap(), b"abcdef");
        for i in HEADER_LEN..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x10;
            assert_eq!(
                ring.open(&h, &bad),
                Err(DropReason::BadChecksum),
                "byte {i}"
            );
        }
    }

    #[test]
    fn mode_mismatch_is_refused() {
        let mut plain = Keyring::new(&[], "c");
        let mut sealed_ring = Keyring::new(&[[1; 32]], "c");
        let hp = header(&plain, "c");
        let hs = header(&sealed_ring, "c");
        let dp = sealed(&mut plain, &hp, b"x");
        let ds = sealed(&mut sealed_ring, &hs, b"x");
        assert_eq!(sealed_ring.open(&hp, &dp), Err(DropReason::AuthFailure));
        assert_eq!(plain.open(&hs, &ds), Err(DropReason::UnknownKeyId));
    }

    #[test]
    fn debug_does_not_print_keys() {
        let ring = Keyring::new(&[[0x42; 32]], "c");
        let s = format!("{ring:?}");
        assert!(!s.contains("66, 66"), "{s}");
    }
}
