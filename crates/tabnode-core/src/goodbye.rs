//! A node's signed goodbye: a tab that is being closed tells the relay so
//! over HTTP (`navigator.sendBeacon` on `pagehide`, the one request a page
//! may still make as it goes), and the relay drops its connection at once
//! instead of waiting for pings to fail on the dead WebRTC connection.
//!
//! The goodbye is signed with the node's identity key (an Ed25519 peer id
//! carries its public key), so nobody can say goodbye for another node. It
//! names when the node's relay connection started and when it was signed,
//! both on the node's clock: the relay maps them onto its own clock (the
//! beacon arrives within moments of being signed) and drops the connection
//! only if it started then. A goodbye replayed later, after the node has
//! connected again (a reload), names the old connection and is refused.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// What the signature covers, before the fields.
pub const DOMAIN: &str = "tabnode-goodbye/1";

/// How far the goodbye's signing time may be from the relay's clock: the
/// node's clock may be off by this much (and the goodbye no older).
pub const MAX_SKEW_MS: u64 = 5 * 60_000;

/// How far the connection's start, mapped onto the relay's clock, may be
/// from when the relay saw it start (handshake and beacon delays).
pub const START_TOLERANCE_MS: u64 = 10_000;

/// A signed goodbye (JSON: what a tab posts to `/api/goodbye`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// The node saying goodbye.
    pub peer: String,
    /// When its relay connection started (node's clock, ms since the epoch).
    pub connected_at_ms: u64,
    /// When it signed this (node's clock, ms since the epoch).
    pub at_ms: u64,
    /// The identity key's signature of [`Goodbye::signed_bytes`], URL-safe
    /// base64 without padding.
    pub signature: String,
}

/// Why a goodbye is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoodbyeError {
    /// `peer` is not a peer id.
    #[error("not a peer id: {0}")]
    BadPeer(String),
    /// The peer id does not carry its public key (only Ed25519 ids do).
    #[error("peer id {0} does not carry its public key")]
    KeyNotInline(String),
    /// The signature is not base64.
    #[error("the signature is not URL-safe base64")]
    BadEncoding,
    /// The signature does not verify with the peer's key.
    #[error("the signature does not match {0}")]
    BadSignature(String),
    /// Signed too far from now (a stale goodbye, or a clock far off).
    #[error("signed {skew_ms} ms away from the relay's clock (at most {max_ms} ms)")]
    Stale {
        /// How far.
        skew_ms: u64,
        /// The limit.
        max_ms: u64,
    },
    /// Its connection started after it was signed.
    #[error("the connection starts after the goodbye was signed")]
    Inconsistent,
    /// The key could not sign (not an Ed25519 key).
    #[error("cannot sign a goodbye: {0}")]
    Signing(String),
}

/// A goodbye that verified: whose, and when its connection started on the
/// verifier's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The node.
    pub peer: PeerId,
    /// Its connection's start, on the verifier's clock.
    pub connected_at_ms: u64,
}

impl Goodbye {
    /// The bytes the signature covers.
    #[must_use]
    pub fn signed_bytes(peer: &str, connected_at_ms: u64, at_ms: u64) -> Vec<u8> {
        format!("{DOMAIN}\n{peer}\n{connected_at_ms}\n{at_ms}").into_bytes()
    }

    /// Signs a goodbye for the connection that started at
    /// `connected_at_ms`, at `at_ms` (both on the node's clock).
    ///
    /// # Errors
    /// [`GoodbyeError::Inconsistent`] when the connection starts after
    /// `at_ms`; [`GoodbyeError::Signing`] for a key that cannot sign.
    pub fn sign(key: &Keypair, connected_at_ms: u64, at_ms: u64) -> Result<Self, GoodbyeError> {
        if connected_at_ms > at_ms {
            return Err(GoodbyeError::Inconsistent);
        }
        let peer = key.public().to_peer_id().to_string();
        let signature = key
            .sign(&Self::signed_bytes(&peer, connected_at_ms, at_ms))
            .map_err(|e| GoodbyeError::Signing(e.to_string()))?;
        Ok(Self {
            peer,
            connected_at_ms,
            at_ms,
            signature: URL_SAFE_NO_PAD.encode(signature),
        })
    }

    /// Checks the signature and the time against `now_ms` (the verifier's
    /// clock), and maps the connection's start onto that clock.
    ///
    /// # Errors
    /// Every [`GoodbyeError`] but `Signing`.
    pub fn verify(&self, now_ms: u64) -> Result<Verified, GoodbyeError> {
        let peer: PeerId = self
            .peer
            .parse()
            .map_err(|_| GoodbyeError::BadPeer(self.peer.clone()))?;
        let key = public_key(&peer).ok_or_else(|| GoodbyeError::KeyNotInline(self.peer.clone()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| GoodbyeError::BadEncoding)?;
        let bytes = Self::signed_bytes(&self.peer, self.connected_at_ms, self.at_ms);
        if !key.verify(&bytes, &signature) {
            return Err(GoodbyeError::BadSignature(self.peer.clone()));
        }
        let skew_ms = now_ms.abs_diff(self.at_ms);
        if skew_ms > MAX_SKEW_MS {
            return Err(GoodbyeError::Stale {
                skew_ms,
                max_ms: MAX_SKEW_MS,
            });
        }
        // How long the connection had lasted when the goodbye was signed,
        // counted back from now.
        let lasted = self
            .at_ms
            .checked_sub(self.connected_at_ms)
            .ok_or(GoodbyeError::Inconsistent)?;
        Ok(Verified {
            peer,
            connected_at_ms: now_ms.saturating_sub(lasted),
        })
    }
}

/// The public key inside an identity-hashed peer id (Ed25519's).
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let hash = peer.as_ref();
    // Multihash code 0: the identity "hash", i.e. the key itself.
    if hash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(hash.digest()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn a_signed_goodbye_verifies_and_maps_the_start_onto_the_verifiers_clock() {
        let key = Keypair::generate_ed25519();
        let g = Goodbye::sign(&key, T0, T0 + 60_000).expect("sign");
        // The verifier's clock runs 2 s ahead of the node's.
        let v = g.verify(T0 + 62_000).expect("verify");
        assert_eq!(v.peer, key.public().to_peer_id());
        assert_eq!(v.connected_at_ms, T0 + 2_000);
        // And survives JSON.
        let back: Goodbye =
            serde_json::from_str(&serde_json::to_string(&g).expect("json")).expect("parse");
        assert_eq!(
            back.verify(T0 + 60_000).expect("verify").connected_at_ms,
            T0
        );
    }

    #[test]
    fn another_key_altered_fields_and_garbage_are_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let g = Goodbye::sign(&key, T0, T0 + 1_000).expect("valid");
        let now = T0 + 1_000;
        // Someone else's signature under this peer's name.
        let forged = Goodbye {
            signature: Goodbye::sign(&other, T0, T0 + 1_000)
                .expect("valid")
                .signature,
            ..g.clone()
        };
        assert_eq!(
            forged.verify(now),
            Err(GoodbyeError::BadSignature(g.peer.clone()))
        );
        // Any field changed after signing.
        for altered in [
            Goodbye {
                connected_at_ms: T0 + 1,
                ..g.clone()
            },
            Goodbye {
                at_ms: T0 + 999,
                ..g.clone()
            },
            Goodbye {
                peer: other.public().to_peer_id().to_string(),
                ..g.clone()
            },
        ] {
            assert!(
                matches!(altered.verify(now), Err(GoodbyeError::BadSignature(_))),
                "{altered:?}"
            );
        }
        let garbage = Goodbye {
            signature: "not base64!".into(),
            ..g.clone()
        };
        assert_eq!(garbage.verify(now), Err(GoodbyeError::BadEncoding));
        let bad_peer = Goodbye {
            peer: "nobody".into(),
            ..g.clone()
        };
        assert_eq!(
            bad_peer.verify(now),
            Err(GoodbyeError::BadPeer("nobody".into()))
        );
    }

    #[test]
    fn a_stale_goodbye_and_a_start_after_signing_are_refused() {
        let key = Keypair::generate_ed25519();
        let g = Goodbye::sign(&key, T0, T0 + 1_000).expect("valid");
        assert_eq!(
            g.verify(T0 + 1_000 + MAX_SKEW_MS + 1),
            Err(GoodbyeError::Stale {
                skew_ms: MAX_SKEW_MS + 1,
                max_ms: MAX_SKEW_MS
            })
        );
        assert!(g.verify(T0 + 1_000 - MAX_SKEW_MS).is_ok());
        assert_eq!(
            Goodbye::sign(&key, T0 + 1, T0),
            Err(GoodbyeError::Inconsistent)
        );
    }

    #[test]
    fn a_peer_id_without_its_key_is_refused() {
        // A SHA-256 peer id (what RSA keys get) does not carry the key.
        let hashed = PeerId::from_multihash(
            libp2p::multihash::Multihash::wrap(0x12, &[7; 32]).expect("valid"),
        )
        .expect("valid");
        let g = Goodbye {
            peer: hashed.to_string(),
            connected_at_ms: T0,
            at_ms: T0,
            signature: String::new(),
        };
        assert_eq!(
            g.verify(T0),
            Err(GoodbyeError::KeyNotInline(hashed.to_string()))
        );
    }
}
