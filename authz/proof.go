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
	// Step 2: a compact JWS of a sane size.
	seg, derr := splitProof(proof)
	if derr != nil {
		return checkedProof{}, derr
	}
	// Steps 4 to 7: the header and the signature by its key.
	var small [512]byte
	payload, ph, cached, derr := v.checkProofSignature(&seg, small[:0])
	if derr != nil {
		return checkedProof{}, derr
	}
	// Step 3: all required claims are present, with the right JSON types.
	c, err := parseProofClaims(payload)
	if err != nil {
		return checkedProof{}, denyErr(InvalidProof, "proof_claims", "the DPoP proof claims are malformed", err)
	}
	// Steps 8 to 12: the claims against the request, the token and the key.
	nonceAge, derr := v.checkProofClaims(&c, &t, ph.jkt, now)
	if derr != nil {
		return checkedProof{}, derr
	}
	// The header passed every check and its key is one a valid token is
	// bound to: worth keeping.
	if !cached {
		v.proofHeaders.put(seg.header, ph)
	}
	// iat is rebuilt from its number: passed as c.IAT to the interface
	// method, c would leak, and with it the payload its claims point into,
	// whose 512-byte buffer then moved to the heap on every request.
	iat := time.Unix(c.IAT.Unix(), int64(c.IAT.Nanosecond()))
	// Replay, last (recordProof).
	if derr := v.recordProof(ctx, ph.jkt, c.JTI.V, iat); derr != nil {
		return checkedProof{}, derr
	}
	return checkedProof{jkt: ph.jkt, nonceAge: nonceAge}, nil
}

// proofSegments are the base64url segments of a compact JWS proof, as sent.
type proofSegments struct {
	header, payload, sig string
	signed               string // header.payload, the signing input
}

// splitProof is step 2 of RFC 9449 §4.3: the value is a well-formed JWT,
// here a compact JWS of three base64url segments, and of a sane size (a
// proof with a 4096-bit RSA key is about 1.5 KiB).
func splitProof(proof string) (proofSegments, *Error) {
	if len(proof) > MaxProofSize {
		return proofSegments{}, deny(InvalidProof, "proof_malformed", "the DPoP proof is too large")
	}
	if strings.Count(proof, ".") != 2 {
		return proofSegments{}, deny(InvalidProof, "proof_malformed", "the DPoP proof is not a compact JWS")
	}
	var s proofSegments
	var rest string
	s.header, rest, _ = strings.Cut(proof, ".")
	s.payload, s.sig, _ = strings.Cut(rest, ".")
	s.signed = proof[:len(s.header)+1+len(s.payload)]
	// The signature is at most 512 bytes (RSA 4096; ES512 is 132).
	if base64.RawURLEncoding.DecodedLen(len(s.sig)) > maxSignatureSize {
		return proofSegments{}, deny(InvalidProof, "proof_malformed", "the DPoP proof signature is too long")
	}
	return s, nil
}

// decode is the end of step 2: it decodes the signature into sigBuf and the
// payload onto the end of payload, a buffer of the caller's (a new one when
// it is too small), and returns both.
func (s *proofSegments) decode(sigBuf *[maxSignatureSize]byte, payload []byte) (sig, claims []byte, derr *Error) {
	n, err := base64.RawURLEncoding.Decode(sigBuf[:], readOnlyBytes(s.sig))
	if err != nil {
		return nil, nil, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", err)
	}
	if l := base64.RawURLEncoding.DecodedLen(len(s.payload)); l > cap(payload) {
		payload = make([]byte, 0, l)
	}
	payload, err = base64.RawURLEncoding.AppendDecode(payload, readOnlyBytes(s.payload))
	if err != nil {
		return nil, nil, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", err)
	}
	return sigBuf[:n], payload, nil
}

// checkProofSignature is steps 4 to 7: the header and the signature by its
// key. It decodes the signature and the payload (the payload onto the end of
// payload, a buffer of the caller's) and returns the payload; cached reports
// whether the header came from the cache.
func (v *Verifier) checkProofSignature(s *proofSegments, payload []byte) (claims []byte, ph *proofHeader, cached bool, derr *Error) {
	sigBuf := sigBuffers.Get().(*[maxSignatureSize]byte)
	defer sigBuffers.Put(sigBuf)
	sig, payload, derr := s.decode(sigBuf, payload)
	if derr != nil {
		return nil, nil, false, derr
	}
	// Steps 4, 5 and 7: the header (typ, alg, crit, jwk), from the cache or
	// checked now.
	ph, cached = v.proofHeaders.get(s.header)
	if !cached {
		if ph, derr = v.parseProofHeader(s.header); derr != nil {
			return nil, nil, false, derr
		}
	}
	// Step 6: the signature verifies with the public key in jwk. The signing
	// input is the proof's own bytes, read in place: the verifiers only hash it.
	if err := ph.verifier.Verify(readOnlyBytes(s.signed), sig, ph.raw); err != nil {
		return nil, nil, false, denyErr(InvalidProof, "proof_signature", "the DPoP proof signature is invalid", err)
	}
	return payload, ph, cached, nil
}

// checkProofClaims is the rest of step 3 and steps 8 to 12 on the claims of
// a proof whose signature verified, jkt being the thumbprint of its key. It
// returns the age of the proof's nonce (0 with nonces off).
func (v *Verifier) checkProofClaims(c *proofClaims, t *proofTarget, jkt string, now time.Time) (time.Duration, *Error) {
	// Step 3, continued: jti (not empty), htm, htu and iat are present.
	if !c.JTI.Present || len(c.JTI.V) == 0 || !c.HTM.Present || !c.HTU.Present || !c.HasIAT {
		return 0, deny(InvalidProof, "proof_claims", "the DPoP proof lacks jti, htm, htu or iat")
	}
	// Step 12 needs ath whenever an access token is presented (RFC 9449 §4.2, §7).
	if !c.ATH.Present {
		return 0, deny(InvalidProof, "proof_claims", "the DPoP proof lacks ath")
	}
	// Step 8: htm matches the method of the request.
	if string(c.HTM.V) != t.method {
		return 0, deny(InvalidProof, "proof_htm", "the DPoP proof method does not match the request")
	}
	// Step 9: htu matches the request URI without query and fragment, both normalized.
	if !t.htu.matches(c.HTU.V) {
		return 0, deny(InvalidProof, "proof_htu", "the DPoP proof URI does not match the request")
	}
	// Step 10: the nonce; step 11: iat.
	nonceAge, derr := v.checkNonce(c.Nonce, now)
	if derr != nil {
		return 0, derr
	}
	if derr := v.checkIAT(c.IAT, now); derr != nil {
		return 0, derr
	}
	// Step 12a: ath is the base64url SHA-256 of the access token as presented
	// (computed once per token, with the verified-token cache's key).
	if subtle.ConstantTimeCompare(c.ATH.V, readOnlyBytes(t.ath)) != 1 {
		return 0, deny(InvalidProof, "proof_ath", "the DPoP proof is not bound to this access token")
	}
	// Step 12b: the RFC 7638 thumbprint of jwk equals the token's cnf.jkt.
	if subtle.ConstantTimeCompare(readOnlyBytes(jkt), readOnlyBytes(t.jkt)) != 1 {
		return 0, deny(InvalidProof, "proof_jkt", "the DPoP proof key is not the key the token is bound to")
	}
	return nonceAge, nil
}

// checkNonce is step 10: with server nonces on, the nonce is one this server
// issued and is fresh. It returns the nonce's age.
func (v *Verifier) checkNonce(nonce claimString, now time.Time) (time.Duration, *Error) {
	if v.nonces == nil {
		return 0, nil
	}
	if !nonce.Present {
		return 0, deny(UseNonce, "nonce_required", "a DPoP nonce is required")
	}
	age, ok := v.nonces.Age(string(nonce.V), now)
	if !ok || age < -v.cfg.DPoPFutureSkew || age > NonceLifetime {
		return 0, deny(UseNonce, "nonce_stale", "the DPoP nonce is invalid or stale")
	}
	return age, nil
}

// checkIAT is step 11: iat lies in the acceptance window [now - max age,
// now + future skew].
func (v *Verifier) checkIAT(iat, now time.Time) *Error {
	if iat.Before(now.Add(-v.cfg.DPoPMaxAge)) {
		return deny(InvalidProof, "proof_iat", "the DPoP proof is too old")
	}
	if iat.After(now.Add(v.cfg.DPoPFutureSkew)) {
		return deny(InvalidProof, "proof_iat", "the DPoP proof is issued in the future")
	}
	return nil
}

// recordProof is the replay check (RFC 9449 §11.1): the jti, scoped by the
// proof key's thumbprint jkt, is seen once in the whole acceptance window.
// It comes last, so that invalid proofs fill nothing.
func (v *Verifier) recordProof(ctx context.Context, jkt string, jti []byte, iat time.Time) *Error {
	rctx, span := startSpan(ctx, SpanReplay)
	fresh, err := v.replay.FirstUse(rctx, replayKey(jkt, jti), iat, v.replayTTL)
	derr := replayDenial(fresh, err)
	if span != nil {
		result := "fresh"
		switch {
		case err != nil:
			result = "error"
		case !fresh:
			result = "replay"
		}
		span.SetAttributes(AttrReplayResult.String(result))
		endSpan(span, derr)
	}
	return derr
}

// replayDenial is the denial of what the replay store answered, if any: a
// replay is a bad proof; a store that could not tell, a technical error.
func replayDenial(fresh bool, err error) *Error {
	switch {
	case err == nil && fresh:
		return nil
	case err == nil:
		return deny(InvalidProof, "proof_replay", "the DPoP proof has been used before")
	case errors.Is(err, ErrStoreRecovering):
		return denyErr(Unavailable, "replay_store_recovering", "the replay store is unavailable", err)
	}
	return denyErr(Unavailable, "replay_store_unavailable", "the replay store is unavailable", err)
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
