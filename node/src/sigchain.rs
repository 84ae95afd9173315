//! The sigchain: each node's append-only, hash-linked chain of signed claims.
//!
//! A claim is a JWS-style token (the general JSON serialisation of RFC 7515, with EdDSA):
//! a base64url payload and one or more signatures, each over `protected.payload` with a
//! protected header naming the signer's NodeId in `kid`. The payload holds the claim's
//! type, its issuer (the chain's node), its subject, its sequence number in the chain
//! (from 1), the SHA-256 digest of the previous token (none for the first), a time and a
//! random nonce.
//!
//! What a claim proves:
//! - `ClaimLinkNode`: signed by both the issuer and the subject node, so both keys agreed
//!   that the two nodes belong to one gestalt (one person or team).
//! - `ClaimLinkIdentity`: signed by the issuer; the same token published on the identity
//!   provider under that identity proves the identity's owner holds the node key, or was
//!   handed a claim by it and chose to publish it.
//! - `ClaimKeyRenew`: signed by the old and the new key of a node that renewed its key;
//!   the chain continues under the new NodeId.
//!
//! Verification of a chain checks every link: sequence numbers without gaps, each
//! previous digest, the issuer, and every signature a claim type requires. A chain with a
//! claim removed, reordered, replayed or altered fails, and says where.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::clock::unix_s;
use crate::identity::{Identity, NodeId, verify};
use crate::store::{Read, StoreError, Table, WriteTx};

/// Kinds of claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimType {
    /// The issuer node and the subject node are one gestalt.
    ClaimLinkNode,
    /// The issuer node and the subject identity (`provider:id`) are one gestalt.
    ClaimLinkIdentity,
    /// The node renewed its key: the issuer (old key) hands its chain to the subject (new
    /// key). Signed by both; later claims are issued by the new key.
    ClaimKeyRenew,
}

/// What a claim says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Its kind.
    pub typ: ClaimType,
    /// The node whose chain it belongs to.
    pub iss: String,
    /// The other party: a NodeId or `provider:identity`.
    pub sub: String,
    /// Position in the issuer's chain, from 1.
    pub seq: u64,
    /// base64url SHA-256 of the previous token, or none for the first.
    pub prev_digest: Option<String>,
    /// Unix seconds when it was made.
    pub iat: u64,
    /// A random value: no two claims are the same bytes.
    pub nonce: String,
}

/// A protected header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// One signature of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// base64url of the protected header.
    pub protected: String,
    /// base64url of the Ed25519 signature.
    pub signature: String,
}

/// A signed claim (JWS general JSON serialisation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimToken {
    /// base64url of the claim's JSON.
    pub payload: String,
    /// The signatures.
    pub signatures: Vec<Signature>,
}

/// Why a claim or a chain was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The token does not decode.
    #[error("claim {seq}: malformed ({reason})")]
    Malformed {
        /// Position in the chain (0 when not in a chain).
        seq: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A signature does not verify, or a required one is missing.
    #[error("claim {seq}: {reason}")]
    BadSignature {
        /// Position.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The chain is not intact: a gap, a wrong previous digest, another issuer.
    #[error("claim {seq}: the chain is broken ({reason})")]
    BrokenChain {
        /// Position.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

impl ClaimToken {
    /// The claim, decoded (signatures not checked).
    pub fn claim(&self) -> Result<Claim, ClaimError> {
        let bytes = B64
            .decode(&self.payload)
            .map_err(|_| ClaimError::Malformed {
                seq: 0,
                reason: "payload is not base64url",
            })?;
        serde_json::from_slice(&bytes).map_err(|_| ClaimError::Malformed {
            seq: 0,
            reason: "payload is not a claim",
        })
    }

    /// A new token for `claim`, signed by `signer`.
    pub fn sign(claim: &Claim, signer: &Identity) -> ClaimToken {
        let payload = B64.encode(serde_json::to_vec(claim).expect("a claim always serialises"));
        let mut token = ClaimToken {
            payload,
            signatures: Vec::new(),
        };
        token.add_signature(signer);
        token
    }

    /// Adds `signer`'s signature.
    pub fn add_signature(&mut self, signer: &Identity) {
        let header = Header {
            alg: "EdDSA".into(),
            kid: signer.node_id().to_string(),
        };
        let protected =
            B64.encode(serde_json::to_vec(&header).expect("a header always serialises"));
        // The protected header is JSON, so its base64url starts with "ey": always signable.
        let Some(signature) = signer.sign_jws(&format!("{protected}.{}", self.payload)) else {
            return;
        };
        self.signatures.push(Signature {
            protected,
            signature: B64.encode(signature),
        });
    }

    /// The NodeIds whose signatures on this token verify.
    pub fn valid_signers(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        for s in &self.signatures {
            let Ok(header) = B64.decode(&s.protected) else {
                continue;
            };
            let Ok(header) = serde_json::from_slice::<Header>(&header) else {
                continue;
            };
            let Ok(kid) = header.kid.parse::<NodeId>() else {
                continue;
            };
            let Ok(sig) = B64.decode(&s.signature) else {
                continue;
            };
            if header.alg == "EdDSA"
                && verify(
                    &kid,
                    format!("{}.{}", s.protected, self.payload).as_bytes(),
                    &sig,
                ) == Ok(true)
                && !out.contains(&kid)
            {
                out.push(kid);
            }
        }
        out
    }

    /// base64url SHA-256 of the token: what the next claim names as its previous digest.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.payload.as_bytes());
        for s in &self.signatures {
            hash.update(b".");
            hash.update(s.protected.as_bytes());
            hash.update(b".");
            hash.update(s.signature.as_bytes());
        }
        B64.encode(hash.finalize())
    }

    /// Checks the signatures this claim needs on its own (not its place in a chain):
    /// the issuer's, and for a node link the subject node's too.
    pub fn verify_signatures(&self) -> Result<Claim, ClaimError> {
        let claim = self.claim()?;
        let seq = claim.seq;
        let signers = self.valid_signers();
        // A node the claim names must have signed it.
        let signed_by = |node: &str, not_a_node: &'static str, who: &str| {
            let node: NodeId = node.parse().map_err(|_| ClaimError::Malformed {
                seq,
                reason: not_a_node,
            })?;
            if signers.contains(&node) {
                Ok(())
            } else {
                Err(ClaimError::BadSignature {
                    seq,
                    reason: format!("no valid signature by {who} {node}"),
                })
            }
        };
        signed_by(&claim.iss, "the issuer is not a NodeId", "its issuer")?;
        if matches!(
            claim.typ,
            ClaimType::ClaimLinkNode | ClaimType::ClaimKeyRenew
        ) {
            signed_by(&claim.sub, "the subject is not a NodeId", "the linked node")?;
        }
        Ok(claim)
    }
}

/// A new claim for the next place in `tx`'s chain of `issuer`.
pub fn next_claim(
    tx: &impl Read,
    issuer: &NodeId,
    typ: ClaimType,
    sub: &str,
) -> Result<Claim, StoreError> {
    let last = last(tx)?;
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    Ok(Claim {
        typ,
        iss: issuer.to_string(),
        sub: sub.to_owned(),
        seq: last.as_ref().map_or(1, |(seq, _)| seq + 1),
        prev_digest: last.map(|(_, token)| token.digest()),
        iat: unix_s(),
        nonce: B64.encode(nonce),
    })
}

fn corrupt() -> StoreError {
    StoreError::Corrupt {
        table: "sigchain",
        reason: "unreadable claim",
    }
}

/// The newest claim of this node's chain, with its sequence number.
pub fn last(tx: &impl Read) -> Result<Option<(u64, ClaimToken)>, StoreError> {
    match tx
        .range(Table::Sigchain, &u64::MAX.to_be_bytes(), 1, true)?
        .into_iter()
        .next()
    {
        Some((key, value)) => {
            let seq = u64::from_be_bytes(key.as_slice().try_into().map_err(|_| corrupt())?);
            Ok(Some((
                seq,
                serde_json::from_slice(&value).map_err(|_| corrupt())?,
            )))
        }
        None => Ok(None),
    }
}

/// Appends `token` to this node's chain, in `tx`; it must be the claim for the next place.
pub fn append(tx: &mut WriteTx<'_>, token: &ClaimToken) -> Result<u64, StoreError> {
    let claim = token.claim().map_err(|_| corrupt())?;
    let next = last(tx)?.map_or(1, |(seq, _)| seq + 1);
    if claim.seq != next {
        return Err(StoreError::Corrupt {
            table: "sigchain",
            reason: "a claim out of sequence",
        });
    }
    let bytes = serde_json::to_vec(token).expect("a token always serialises");
    tx.put(Table::Sigchain, &claim.seq.to_be_bytes(), &bytes)?;
    Ok(claim.seq)
}

/// Empties this node's chain (a key reset starts a fresh identity), in `tx`.
pub fn clear(tx: &mut WriteTx<'_>) -> Result<(), StoreError> {
    let keys: Vec<Vec<u8>> = tx
        .range(Table::Sigchain, &0u64.to_be_bytes(), usize::MAX, false)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        tx.delete(Table::Sigchain, &key)?;
    }
    Ok(())
}

/// This node's whole chain, oldest first.
pub fn all(tx: &impl Read) -> Result<Vec<ClaimToken>, StoreError> {
    tx.range(Table::Sigchain, &0u64.to_be_bytes(), usize::MAX, false)?
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).map_err(|_| corrupt()))
        .collect()
}

/// Verifies `owner`'s chain: every link and every required signature. A chain that
/// passed through key renewals belongs to each of its keys. Returns the claims.
pub fn verify_chain(owner: &NodeId, tokens: &[ClaimToken]) -> Result<Vec<Claim>, ClaimError> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut prev: Option<String> = None;
    // The issuer so far: the first claim's, then each renewal's new key.
    let mut issuer: Option<String> = None;
    let mut keys: Vec<String> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let position = i as u64 + 1;
        let claim = token.verify_signatures().map_err(|e| match e {
            ClaimError::Malformed { reason, .. } => ClaimError::Malformed {
                seq: position,
                reason,
            },
            ClaimError::BadSignature { reason, .. } => ClaimError::BadSignature {
                seq: position,
                reason,
            },
            other => other,
        })?;
        let broken = |reason: String| ClaimError::BrokenChain {
            seq: position,
            reason,
        };
        if claim.seq != position {
            return Err(broken(format!(
                "it says it is number {}, a claim is missing or repeated",
                claim.seq
            )));
        }
        let expected = issuer.get_or_insert_with(|| claim.iss.clone());
        if claim.iss != *expected {
            return Err(broken(format!(
                "issued by {}, not by {expected}",
                claim.iss
            )));
        }
        if claim.prev_digest != prev {
            return Err(broken("it does not follow the claim before it".into()));
        }
        keys.push(claim.iss.clone());
        if claim.typ == ClaimType::ClaimKeyRenew {
            issuer = Some(claim.sub.clone());
            keys.push(claim.sub.clone());
        }
        prev = Some(token.digest());
        out.push(claim);
    }
    if !out.is_empty() && !keys.contains(&owner.to_string()) {
        return Err(ClaimError::BrokenChain {
            seq: 1,
            reason: format!("the chain is not {owner}'s"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(issuer: &Identity, seq: u64, prev: Option<String>, sub: &str) -> Claim {
        Claim {
            typ: ClaimType::ClaimLinkIdentity,
            iss: issuer.node_id().to_string(),
            sub: sub.into(),
            seq,
            prev_digest: prev,
            iat: 1,
            nonce: format!("n{seq}"),
        }
    }

    #[test]
    fn chains_verify_and_every_kind_of_tampering_fails() {
        let a = Identity::generate();
        let b = Identity::generate();
        let first = ClaimToken::sign(&claim(&a, 1, None, "github.com:alice"), &a);
        let mut link = Claim {
            typ: ClaimType::ClaimLinkNode,
            sub: b.node_id().to_string(),
            ..claim(&a, 2, Some(first.digest()), "")
        };
        link.nonce = "link".into();
        let mut second = ClaimToken::sign(&link, &a);
        // Only one of the two signatures a node link needs.
        assert!(matches!(
            verify_chain(&a.node_id(), &[first.clone(), second.clone()]),
            Err(ClaimError::BadSignature { seq: 2, .. })
        ));
        second.add_signature(&b);
        let chain = vec![first.clone(), second.clone()];
        assert_eq!(verify_chain(&a.node_id(), &chain).unwrap().len(), 2);

        // Another node's chain.
        assert!(matches!(
            verify_chain(&b.node_id(), &chain),
            Err(ClaimError::BrokenChain { seq: 1, .. })
        ));
        // A claim replayed at the end.
        let replayed = vec![first.clone(), second.clone(), first.clone()];
        assert!(matches!(
            verify_chain(&a.node_id(), &replayed),
            Err(ClaimError::BrokenChain { seq: 3, .. })
        ));
        // A claim removed.
        assert!(verify_chain(&a.node_id(), &[second.clone()]).is_err());
        // An altered payload: the signatures no longer match.
        let mut altered = second.clone();
        let mut c = altered.claim().unwrap();
        c.sub = Identity::generate().node_id().to_string();
        altered.payload = B64.encode(serde_json::to_vec(&c).unwrap());
        assert!(matches!(
            verify_chain(&a.node_id(), &[first.clone(), altered]),
            Err(ClaimError::BadSignature { seq: 2, .. })
        ));
        // A forged co-signature: a key that is not the subject's.
        let mallory = Identity::generate();
        let mut forged = ClaimToken::sign(&link, &a);
        forged.add_signature(&mallory);
        assert!(matches!(
            verify_chain(&a.node_id(), &[first, forged]),
            Err(ClaimError::BadSignature { seq: 2, .. })
        ));
    }
}
