//! Values in memcached sealed with the cluster's keys: when the node has a `crypto_key` (or a
//! keyring), every value the tier stores is XChaCha20-Poly1305 ciphertext under the first key
//! with a random nonce, bound to its memcached key and generation (so a value cannot be moved to
//! another key or resurrected across a clear), and only values that open under one of the keys
//! are read. Without keys, values are plaintext (as the cluster's datagrams are).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE: usize = 24;

/// The keys values are sealed and opened with.
pub(crate) struct Sealer {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl Sealer {
    /// `None` without keys (plaintext).
    pub(crate) fn new(keys: &[[u8; 32]]) -> Option<Sealer> {
        (!keys.is_empty()).then(|| Sealer {
            ciphers: keys
                .iter()
                .map(|k| XChaCha20Poly1305::new(k.into()))
                .collect(),
        })
    }

    /// nonce ‖ ciphertext ‖ tag of `value`, bound to `aad`.
    pub(crate) fn seal(&self, aad: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE] = rand::random();
        let ct = self.ciphers[0]
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad })
            .ok()?;
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Some(out)
    }

    /// The plaintext, if `sealed` opens under one of the keys with `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        self.ciphers.iter().find_map(|c| {
            c.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
                .ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_with_a_key_and_the_same_binding() {
        let s = Sealer::new(&[[1; 32]]).unwrap();
        let sealed = s.seal(b"key-a/7", b"value").unwrap();
        assert_eq!(s.open(b"key-a/7", &sealed).as_deref(), Some(&b"value"[..]));
        assert_eq!(s.open(b"key-b/7", &sealed), None);
        assert_eq!(s.open(b"key-a/8", &sealed), None);
        let rotated = Sealer::new(&[[2; 32], [1; 32]]).unwrap();
        assert_eq!(
            rotated.open(b"key-a/7", &sealed).as_deref(),
            Some(&b"value"[..])
        );
        assert_eq!(
            Sealer::new(&[[3; 32]]).unwrap().open(b"key-a/7", &sealed),
            None
        );
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert_eq!(s.open(b"key-a/7", &tampered), None);
        for n in 0..sealed.len() {
            assert_eq!(s.open(b"key-a/7", &sealed[..n]), None);
        }
        assert!(Sealer::new(&[]).is_none());
    }
}
