package authz

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// MaxProofSize is the longest DPoP proof accepted, in bytes.
const MaxProofSize = 8 << 10

// maxSignatureSize is the longest signature of an accepted proof key: RSA
// of maxProofRSABits.
const maxSignatureSize = maxProofRSABits / 8

// sigBuffers holds the buffers proof signatures are decoded into. The
// verifiers only read a signature while Verify runs (jwx copies it into big
// integers or hands it to crypto/rsa), so a buffer goes back once Verify has
// returned, instead of one 512-byte allocation per proof.
var sigBuffers = sync.Pool{New: func() any { return new([maxSignatureSize]byte) }}

// proofTarget is what a proof must be bound to: the request and the token.
type proofTarget struct {
	method string
	htu    expectedHTU
	ath    string // base64url SHA-256 of the access token as presented
	jkt    string // the token's cnf.jkt
}

// checkedProof is what a valid proof tells the caller.
type checkedProof struct {
	jkt      string
	nonceAge time.Duration
}

// verifyProof runs the checks of RFC 9449 §4.3 on one DPoP proof, in the order
// of that section, and records its jti in the replay store last.
//
// The protected header is checked once per distinct header: a client signs
// every proof under the same header (its key does not change), so the
// decoded header, the parsed jwk and its thumbprint are kept in a bounded
// cache keyed by the header segment exactly as sent, once a proof under it
// has passed every check up to the key binding. The signature, the claims and
// everything else are checked on every proof.
func (v *Verifier) verifyProof(ctx context.Context, proof string, t proofTarget, now time.Time) (checkedProof, *Error) {
	// Step 2: the value is a well-formed JWT, here a compact JWS of three
	// base64url segments, and of a sane size (a proof with a 4096-bit RSA
	// key is about 1.5 KiB).
	if len(proof) > MaxProofSize {
		return checkedProof{}, deny(InvalidProof, "proof_malformed", "the DPoP proof is too large")
	}
	if strings.Count(proof, ".") != 2 {
		return checkedProof{}, deny(InvalidProof, "proof_malformed", "the DPoP proof is not a compact JWS")
	}
	hdrSeg, rest, _ := strings.Cut(proof, ".")
	payloadSeg, sigSeg, _ := strings.Cut(rest, ".")
	signed := proof[:len(hdrSeg)+1+len(payloadSeg)]

	// The signature is at most 512 bytes (RSA 4096; ES512 is 132). The
	// signing input is the proof's own bytes, read in place: the verifiers
	// only hash it.
	if base64.RawURLEncoding.DecodedLen(len(sigSeg)) > maxSignatureSize {
		return checkedProof{}, deny(InvalidProof, "proof_malformed", "the DPoP proof signature is too long")
	}
	sigBuf := sigBuffers.Get().(*[maxSignatureSize]byte)
	defer sigBuffers.Put(sigBuf)
	n, err := base64.RawURLEncoding.Decode(sigBuf[:], readOnlyBytes(sigSeg))
	if err != nil {
		return checkedProof{}, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", err)
	}
	input, sig := readOnlyBytes(signed), sigBuf[:n]

	var small [512]byte
	payload := small[:0]
	if l := base64.RawURLEncoding.DecodedLen(len(payloadSeg)); l > len(small) {
		payload = make([]byte, 0, l)
	}
	payload, err = base64.RawURLEncoding.AppendDecode(payload, readOnlyBytes(payloadSeg))
	if err != nil {
		return checkedProof{}, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", err)
	}

	// Steps 4, 5 and 7: the header (typ, alg, crit, jwk), from the cache or
	// checked now.
	ph, cached := v.proofHeaders.get(hdrSeg)
	if !cached {
		var derr *Error
		if ph, derr = v.parseProofHeader(hdrSeg); derr != nil {
			return checkedProof{}, derr
		}
	}
	// Step 6: the signature verifies with the public key in jwk.
	if err := ph.verifier.Verify(input, sig, ph.raw); err != nil {
		return checkedProof{}, denyErr(InvalidProof, "proof_signature", "the DPoP proof signature is invalid", err)
	}

	// Step 3: all required claims are present, with the right JSON types.
	c, err := parseProofClaims(payload)
	if err != nil {
		return checkedProof{}, denyErr(InvalidProof, "proof_claims", "the DPoP proof claims are malformed", err)
	}
	if !c.JTI.Present || len(c.JTI.V) == 0 || !c.HTM.Present || !c.HTU.Present || !c.HasIAT {
		return checkedProof{}, deny(InvalidProof, "proof_claims", "the DPoP proof lacks jti, htm, htu or iat")
	}
	// Step 12 needs ath whenever an access token is presented (RFC 9449 §4.2, §7).
	if !c.ATH.Present {
		return checkedProof{}, deny(InvalidProof, "proof_claims", "the DPoP proof lacks ath")
	}
	// Step 8: htm matches the method of the request.
	if string(c.HTM.V) != t.method {
		return checkedProof{}, deny(InvalidProof, "proof_htm", "the DPoP proof method does not match the request")
	}
	// Step 9: htu matches the request URI without query and fragment, both normalized.
	if !t.htu.matches(c.HTU.V) {
		return checkedProof{}, deny(InvalidProof, "proof_htu", "the DPoP proof URI does not match the request")
	}
	// Step 10: with server nonces on, the nonce is one this server issued and is fresh.
	var nonceAge time.Duration
	if v.nonces != nil {
		if !c.Nonce.Present {
			return checkedProof{}, deny(UseNonce, "nonce_required", "a DPoP nonce is required")
		}
		age, ok := v.nonces.Age(string(c.Nonce.V), now)
		if !ok || age < -v.cfg.DPoPFutureSkew || age > NonceLifetime {
			return checkedProof{}, deny(UseNonce, "nonce_stale", "the DPoP nonce is invalid or stale")
		}
		nonceAge = age
	}
	// Step 11: iat lies in the acceptance window [now - max age, now + future skew].
	if c.IAT.Before(now.Add(-v.cfg.DPoPMaxAge)) {
		return checkedProof{}, deny(InvalidProof, "proof_iat", "the DPoP proof is too old")
	}
	if c.IAT.After(now.Add(v.cfg.DPoPFutureSkew)) {
		return checkedProof{}, deny(InvalidProof, "proof_iat", "the DPoP proof is issued in the future")
	}
	// Step 12a: ath is the base64url SHA-256 of the access token as presented
	// (computed once per token, with the verified-token cache's key).
	if subtle.ConstantTimeCompare(c.ATH.V, readOnlyBytes(t.ath)) != 1 {
		return checkedProof{}, deny(InvalidProof, "proof_ath", "the DPoP proof is not bound to this access token")
	}
	// Step 12b: the RFC 7638 thumbprint of jwk equals the token's cnf.jkt.
	if subtle.ConstantTimeCompare(readOnlyBytes(ph.jkt), readOnlyBytes(t.jkt)) != 1 {
		return checkedProof{}, deny(InvalidProof, "proof_jkt", "the DPoP proof key is not the key the token is bound to")
	}
	// The header passed every check and its key is one a valid token is
	// bound to: worth keeping.
	if !cached {
		v.proofHeaders.put(hdrSeg, ph)
	}
	// Replay (RFC 9449 §11.1): the jti, scoped by the key, is seen once in the
	// whole acceptance window. Checked last so that invalid proofs fill nothing.
	rctx, span := startSpan(ctx, SpanReplay)
	// iat is rebuilt from its number: passed as c.IAT to the interface
	// method, c would leak, and with it the payload its claims point into,
	// whose 512-byte buffer then moved to the heap on every request.
	iat := time.Unix(c.IAT.Unix(), int64(c.IAT.Nanosecond()))
	fresh, err := v.replay.FirstUse(rctx, replayKey(ph.jkt, c.JTI.V), iat, v.replayTTL)
	if span != nil {
		result := "fresh"
		switch {
		case err != nil:
			result = "error"
		case !fresh:
			result = "replay"
		}
		span.SetAttributes(AttrReplayResult.String(result))
	}
	if err != nil {
		derr := denyErr(Unavailable, "replay_store_unavailable", "the replay store is unavailable", err)
		if errors.Is(err, ErrStoreRecovering) {
			derr = denyErr(Unavailable, "replay_store_recovering", "the replay store is unavailable", err)
		}
		endSpan(span, derr)
		return checkedProof{}, derr
	}
	if !fresh {
		derr := deny(InvalidProof, "proof_replay", "the DPoP proof has been used before")
		endSpan(span, derr)
		return checkedProof{}, derr
	}
	endSpan(span, nil)
	return checkedProof{jkt: ph.jkt, nonceAge: nonceAge}, nil
}

// replayKey scopes a jti by the proof key's thumbprint and hashes it, so that
// a client-chosen jti of any size or alphabet makes a short, safe store key:
// base64url(SHA-256(jkt || 0x00 || jti)).
func replayKey(jkt string, jti []byte) string {
	var sum [sha256.Size]byte
	if n := len(jkt) + 1 + len(jti); n <= 256 {
		var buf [256]byte
		copy(buf[copy(buf[:], jkt)+1:], jti)
		sum = sha256.Sum256(buf[:n])
	} else {
		b := make([]byte, 0, n)
		b = append(append(append(b, jkt...), 0), jti...)
		sum = sha256.Sum256(b)
	}
	var out [43]byte // base64url of 32 bytes, unpadded
	base64.RawURLEncoding.Encode(out[:], sum[:])
	return string(out[:])
}

// isPublicOnly reports whether a JWK is an RSA or EC public key with no
// private member (RFC 9449 §4.3 step 7). jwx parses a JWK with "d" as a
// private key type, and "oct" keys as symmetric: both are refused.
func isPublicOnly(key jwk.Key) bool {
	switch key.(type) {
	case jwk.RSAPublicKey, jwk.ECDSAPublicKey:
	default:
		return false
	}
	for _, m := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"} {
		if _, ok := key.Get(m); ok {
			return false
		}
	}
	return true
}
