//! Sigchains and claims (`node::sigchain`): a claim token (JWS general JSON, EdDSA) or a
//! whole chain as JSON, as a peer sends it (`PeerReply::Claims`) or a provider publishes
//! it (a gist), then decoded and verified: the claim, the signatures, the chain's links.
//!
//! Input: `[which, json...]`; `which` even: a chain (`[ClaimToken]`), odd: one token.
//!
//! Checks: no panic; a verified chain's claims are the claims of its tokens, numbered
//! from 1; a token that verifies has its issuer among its valid signers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use node::identity::NodeId;
use node::sigchain::{ClaimToken, verify_chain};

fn token(token: &ClaimToken) {
    let _ = token.digest();
    let signers = token.valid_signers();
    if let Ok(claim) = token.verify_signatures() {
        let issuer: NodeId = claim.iss.parse().expect("a verified claim's issuer parses");
        assert!(
            signers.contains(&issuer),
            "verified without its issuer's signature"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, json @ ..] = data else {
        return;
    };
    if which % 2 == 1 {
        if let Ok(t) = serde_json::from_slice::<ClaimToken>(json) {
            token(&t);
        }
        return;
    }
    let Ok(chain) = serde_json::from_slice::<Vec<ClaimToken>>(json) else {
        return;
    };
    for t in &chain {
        token(t);
    }
    // The chain's owner as a caller would name it: its first issuer, or a stranger.
    let owner = chain
        .first()
        .and_then(|t| t.claim().ok())
        .and_then(|c| c.iss.parse::<NodeId>().ok())
        .unwrap_or_else(|| pk_fuzz::fixed_node(1));
    if let Ok(claims) = verify_chain(&owner, &chain) {
        assert_eq!(claims.len(), chain.len());
        for (i, (claim, t)) in claims.iter().zip(&chain).enumerate() {
            assert_eq!(claim.seq, i as u64 + 1);
            assert_eq!(Some(claim), t.claim().ok().as_ref());
        }
    }
});
