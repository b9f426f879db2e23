package authz

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/helsegate/helsegate/internal/ttlmap"
)

// proofHeader is a DPoP proof's protected header that passed the header
// checks of RFC 9449 §4.3 (steps 4, 5 and 7), with what verifying a proof
// under it needs. Everything in it is a function of the header's bytes and
// the route's configuration alone, so it is the same for every proof a
// client signs with the same key.
type proofHeader struct {
	raw      any          // the jwk's public key (*ecdsa.PublicKey, *rsa.PublicKey)
	verifier jws.Verifier // jwx's verifier for alg
	jkt      string       // RFC 7638 thumbprint of key, base64url (SHA-256)
}

// parseProofHeader decodes the protected header segment of a proof with jwx
// and runs the header checks. seg is the segment exactly as sent.
func (v *Verifier) parseProofHeader(seg string) (*proofHeader, *Error) {
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return nil, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", err)
	}
	h := jws.NewHeaders()
	if err := json.Unmarshal(raw, h); err != nil {
		return nil, denyErr(InvalidProof, "proof_malformed", "the DPoP proof is not a valid JWS", err)
	}
	// The payload is always base64url (no RFC 7797 "b64": false).
	if b64, ok := h.Get("b64"); ok && b64 != true {
		return nil, deny(InvalidProof, "proof_malformed", "the DPoP proof has an unencoded payload")
	}
	// Step 4: typ is dpop+jwt (RFC 7515 §4.1.9: "application/dpop+jwt" is
	// the same media type).
	if typ := h.Type(); !strings.EqualFold(typ, "dpop+jwt") && !strings.EqualFold(typ, "application/dpop+jwt") {
		return nil, deny(InvalidProof, "proof_typ", "the DPoP proof type must be dpop+jwt")
	}
	// Step 5: alg is an accepted asymmetric algorithm (never none, never MAC).
	alg := h.Algorithm().String()
	if !contains(v.cfg.DPoPAlgorithms, alg) {
		return nil, deny(InvalidProof, "proof_alg", "the DPoP proof algorithm is not accepted")
	}
	if len(h.Critical()) > 0 {
		return nil, deny(InvalidProof, "proof_malformed", "the DPoP proof has critical header parameters")
	}
	// Step 7: jwk is present and holds a public key only.
	key := h.JWK()
	if key == nil {
		return nil, deny(InvalidProof, "proof_jwk", "the DPoP proof has no jwk")
	}
	if !isPublicOnly(key) {
		return nil, deny(InvalidProof, "proof_jwk", "the DPoP proof jwk must be a public key")
	}
	// Step 5 (cont.): alg agrees with the key type and curve of jwk.
	if err := keyFitsAlg(key, alg, maxProofRSABits); err != nil {
		return nil, denyErr(InvalidProof, "proof_alg", "the DPoP proof algorithm does not fit its key", err)
	}
	// Step 7 (cont.): an EC coordinate is no longer than the curve's size
	// (RFC 7518 §6.2.1.2 and §6.2.1.3 make it exactly that size; a shorter
	// one, from a client that strips leading zeros, still names one point).
	// jwx's thumbprint panics on a longer one.
	if err := ecCoordinatesFit(key); err != nil {
		return nil, denyErr(InvalidProof, "proof_jwk", "the DPoP proof jwk is not a usable public key", err)
	}
	ph := &proofHeader{}
	if err := key.Raw(&ph.raw); err != nil {
		return nil, denyErr(InvalidProof, "proof_jwk", "the DPoP proof jwk is not a usable public key", err)
	}
	if ph.verifier, err = jws.NewVerifier(jwa.SignatureAlgorithm(alg)); err != nil {
		return nil, denyErr(InvalidProof, "proof_alg", "the DPoP proof algorithm is not accepted", err)
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, denyErr(InvalidProof, "proof_jwk", "the DPoP proof key has no thumbprint", err)
	}
	ph.jkt = base64.RawURLEncoding.EncodeToString(tp)
	return ph, nil
}

// DefaultProofKeyCacheSize bounds the cache of checked proof headers.
const DefaultProofKeyCacheSize = 4096

// maxCachedProofHeader is the longest header segment the cache keeps. A
// header with a 4096-bit RSA jwk is about 750 characters; anything much
// longer carries members the gateway does not read, and caching it would let
// one client with one valid token fill memory with variations of it.
const maxCachedProofHeader = 2048

// proofHeaderCache keeps checked proof headers by their segment, exactly as
// sent, so that a client reusing its key pays for the JSON, the JWK and the
// thumbprint once. Only headers that passed every header check AND whose key
// verified a proof bound to a valid token are put in it (a header that fails
// is never cached), and none longer than maxCachedProofHeader. An entry holds
// the segment and the parsed public key, nothing else of the header. It is
// bounded: when full, an arbitrary entry makes room (a dropped entry only
// costs one re-parse), so a client varying its header can cost others a
// re-parse, never memory.
type proofHeaderCache struct {
	entries *ttlmap.Map[string, *proofHeader]
	shard   *ttlmap.Shard[string, *proofHeader] // the one shard
}

// newProofHeaderCache returns an empty cache of at most max headers, in one
// shard: more would hash each header once more to pick one.
func newProofHeaderCache(max int) *proofHeaderCache {
	entries := ttlmap.New[string, *proofHeader](ttlmap.Options{Max: max, Shards: 1, Full: ttlmap.DropAny})
	return &proofHeaderCache{entries: entries, shard: entries.Shard(0)}
}

func (c *proofHeaderCache) get(seg string) (*proofHeader, bool) {
	return c.shard.Get(seg)
}

// put keeps ph under seg, for good (a header does not expire), unless seg is
// cached already or too long.
func (c *proofHeaderCache) put(seg string, ph *proofHeader) {
	if len(seg) > maxCachedProofHeader {
		return
	}
	if _, ok := c.shard.Get(seg); ok {
		return
	}
	// A copy: the key must not keep the whole request header alive.
	c.shard.Add(strings.Clone(seg), ph, ttlmap.Never, time.Time{})
}

func (c *proofHeaderCache) len() int { return c.entries.Len() }

// ecCoordinatesFit reports an error when key is an EC key whose x or y is
// longer than a coordinate of its curve.
func ecCoordinatesFit(key jwk.Key) error {
	ec, ok := key.(jwk.ECDSAPublicKey)
	if !ok {
		return nil
	}
	size := map[jwa.EllipticCurveAlgorithm]int{jwa.P256: 32, jwa.P384: 48, jwa.P521: 66}[ec.Crv()]
	if size == 0 {
		return errors.New("unsupported EC curve")
	}
	if len(ec.X()) > size || len(ec.Y()) > size {
		return fmt.Errorf("an EC coordinate is longer than the %d bytes of its curve", size)
	}
	return nil
}
