package authz

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// proofTarget is what a proof must be bound to: the request and the token.
type proofTarget struct {
	method string
	htu    string // normalized expected htu
	token  string // the access token exactly as it came in the Authorization header
	jkt    string // the token's cnf.jkt
}

// checkedProof is what a valid proof tells the caller.
type checkedProof struct {
	jkt      string
	nonceAge time.Duration
}

// verifyProof runs the checks of RFC 9449 §4.3 on one DPoP proof, in the order
// of that section, and records its jti in the replay store last.
func (v *Verifier) verifyProof(ctx context.Context, proof string, t proofTarget, now time.Time) (*checkedProof, *Error) {
	// Step 2: the value is a well-formed JWT, here a compact JWS of three segments.
	if strings.Count(proof, ".") != 2 {
		return nil, deny(InvalidProof, "proof_malformed", "the DPoP proof is not a compact JWS")
	}
	var (
		headerErr *Error
		proofKey  jwk.Key
	)
	provider := jws.KeyProviderFunc(func(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
		h := sig.ProtectedHeaders()
		// Step 4: typ is dpop+jwt.
		if !strings.EqualFold(h.Type(), "dpop+jwt") {
			headerErr = deny(InvalidProof, "proof_typ", "the DPoP proof type must be dpop+jwt")
			return headerErr
		}
		// Step 5: alg is an accepted asymmetric algorithm (never none, never MAC).
		alg := h.Algorithm().String()
		if !contains(v.cfg.DPoPAlgorithms, alg) {
			headerErr = deny(InvalidProof, "proof_alg", "the DPoP proof algorithm is not accepted")
			return headerErr
		}
		if len(h.Critical()) > 0 {
			headerErr = deny(InvalidProof, "proof_malformed", "the DPoP proof has critical header parameters")
			return headerErr
		}
		// Step 7: jwk is present and holds a public key only.
		key := h.JWK()
		if key == nil {
			headerErr = deny(InvalidProof, "proof_jwk", "the DPoP proof has no jwk")
			return headerErr
		}
		if !isPublicOnly(key) {
			headerErr = deny(InvalidProof, "proof_jwk", "the DPoP proof jwk must be a public key")
			return headerErr
		}
		// Step 5 (cont.): alg agrees with the key type and curve of jwk.
		if err := keyFitsAlg(key, alg); err != nil {
			headerErr = denyErr(InvalidProof, "proof_alg", "the DPoP proof algorithm does not fit its key", err)
			return headerErr
		}
		proofKey = key
		sink.Key(jwa.SignatureAlgorithm(alg), key)
		return nil
	})
	// Step 6: the signature verifies with the public key in jwk.
	payload, err := jws.Verify([]byte(proof), jws.WithCompact(), jws.WithKeyProvider(provider), jws.WithContext(ctx))
	if headerErr != nil {
		return nil, headerErr
	}
	if err != nil {
		if _, perr := jws.Parse([]byte(proof), jws.WithCompact()); perr != nil {
			return nil, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", perr)
		}
		return nil, denyErr(InvalidProof, "proof_signature", "the DPoP proof signature is invalid", err)
	}

	// Step 3: all required claims are present, with the right JSON types.
	var c proofClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, denyErr(InvalidProof, "proof_claims", "the DPoP proof claims are malformed", err)
	}
	if c.JTI == nil || *c.JTI == "" || c.HTM == nil || c.HTU == nil || c.IAT == nil {
		return nil, deny(InvalidProof, "proof_claims", "the DPoP proof lacks jti, htm, htu or iat")
	}
	// Step 12 needs ath whenever an access token is presented (RFC 9449 §4.2, §7).
	if c.ATH == nil {
		return nil, deny(InvalidProof, "proof_claims", "the DPoP proof lacks ath")
	}
	// Step 8: htm matches the method of the request.
	if *c.HTM != t.method {
		return nil, deny(InvalidProof, "proof_htm", "the DPoP proof method does not match the request")
	}
	// Step 9: htu matches the request URI without query and fragment, both normalized.
	got, err := NormalizeHTU(*c.HTU)
	if err != nil || got != t.htu {
		return nil, deny(InvalidProof, "proof_htu", "the DPoP proof URI does not match the request")
	}
	// Step 10: with server nonces on, the nonce is one this server issued and is fresh.
	var nonceAge time.Duration
	if v.nonces != nil {
		if c.Nonce == nil {
			return nil, deny(UseNonce, "nonce_required", "a DPoP nonce is required")
		}
		age, ok := v.nonces.Age(*c.Nonce, now)
		if !ok || age < -v.cfg.DPoPFutureSkew || age > NonceLifetime {
			return nil, deny(UseNonce, "nonce_stale", "the DPoP nonce is invalid or stale")
		}
		nonceAge = age
	}
	// Step 11: iat lies in the acceptance window [now - max age, now + future skew].
	if c.IAT.Before(now.Add(-v.cfg.DPoPMaxAge)) {
		return nil, deny(InvalidProof, "proof_iat", "the DPoP proof is too old")
	}
	if c.IAT.After(now.Add(v.cfg.DPoPFutureSkew)) {
		return nil, deny(InvalidProof, "proof_iat", "the DPoP proof is issued in the future")
	}
	// Step 12a: ath is the base64url SHA-256 of the access token as presented.
	sum := sha256.Sum256([]byte(t.token))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare([]byte(*c.ATH), []byte(want)) != 1 {
		return nil, deny(InvalidProof, "proof_ath", "the DPoP proof is not bound to this access token")
	}
	// Step 12b: the RFC 7638 thumbprint of jwk equals the token's cnf.jkt.
	tp, err := proofKey.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, denyErr(InvalidProof, "proof_jwk", "the DPoP proof key has no thumbprint", err)
	}
	jkt := base64.RawURLEncoding.EncodeToString(tp)
	if subtle.ConstantTimeCompare([]byte(jkt), []byte(t.jkt)) != 1 {
		return nil, deny(InvalidProof, "proof_jkt", "the DPoP proof key is not the key the token is bound to")
	}
	// Replay (RFC 9449 §11.1): the jti, scoped by the key, is seen once in the
	// whole acceptance window. Checked last so that invalid proofs fill nothing.
	ttl := v.cfg.DPoPMaxAge + v.cfg.DPoPFutureSkew + time.Second
	rctx, span := startSpan(ctx, SpanReplay)
	fresh, err := v.replay.FirstUse(rctx, replayKey(jkt, *c.JTI), ttl)
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
		endSpan(span, derr)
		return nil, derr
	}
	if !fresh {
		derr := deny(InvalidProof, "proof_replay", "the DPoP proof has been used before")
		endSpan(span, derr)
		return nil, derr
	}
	endSpan(span, nil)
	return &checkedProof{jkt: jkt, nonceAge: nonceAge}, nil
}

// replayKey scopes a jti by the proof key's thumbprint and hashes it, so that
// a client-chosen jti of any size or alphabet makes a short, safe store key.
func replayKey(jkt, jti string) string {
	h := sha256.New()
	h.Write([]byte(jkt))
	h.Write([]byte{0})
	h.Write([]byte(jti))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
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
