package authz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"time"
	"unsafe"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/helsegate/helsegate/internal/strictjson"
)

// verifiedToken is an access token that passed every check that does not
// depend on the time (the time checks are made again on every use).
type verifiedToken struct {
	claims accessClaims
	exp    time.Time
	nbf    time.Time
	// exp plus the clock skew and nbf less it: the bounds of the time
	// checks, computed once per token (the skew is the verifier's own).
	expLimit, nbfLimit time.Time
	ath                string // base64url(SHA-256(token)), what a proof's ath must be (RFC 9449 §4.2)
	// The trust-framework attest as read, on routes that read it: judged
	// at step 4a, after the proof, so that a bad attest is not reported
	// before a bad proof.
	hasAttest bool
	attest    attestDoc
	attestErr error
	memo      TokenMemo // Principal.Memo of every request with this token
}

// verifyToken runs the access-token checks of RFC 9068 §4 and RFC 8725
// (the second step of the checks), using the verified-token cache for the signature. cached
// reports whether the signature check came from that cache. hit is the
// cache's entry for token, when the caller found one (nil: verify it).
func (v *Verifier) verifyToken(ctx context.Context, token string, hit *verifiedToken, now time.Time) (vt *verifiedToken, cached bool, derr *Error) {
	vt, ok := hit, hit != nil
	if !ok {
		if vt, derr = v.verifyTokenSignature(ctx, token); derr != nil {
			return nil, false, derr
		}
		// Once per token: a cached token's proofs compare their ath with it.
		sum := sha256.Sum256(readOnlyBytes(token))
		vt.ath = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	// exp is required and checked with the configured leeway (RFC 7519 §4.1.4).
	if !now.Before(vt.expLimit) {
		return nil, ok, deny(InvalidToken, "token_expired", "the access token has expired")
	}
	// nbf, when present, must have passed (RFC 7519 §4.1.5).
	if !vt.nbf.IsZero() && now.Before(vt.nbfLimit) {
		return nil, ok, deny(InvalidToken, "token_not_yet_valid", "the access token is not yet valid")
	}
	if !ok {
		v.tokens.put(token, vt, now)
	}
	return vt, ok, nil
}

// verifyTokenSignature parses the token, checks its header and signature and
// the claims that do not depend on the time.
func (v *Verifier) verifyTokenSignature(ctx context.Context, token string) (*verifiedToken, *Error) {
	payload, derr := v.verifyTokenJWS(ctx, token)
	if derr != nil {
		return nil, derr
	}
	vt := &verifiedToken{}
	c := &vt.claims
	// Exact member names, none twice: what every other reader of the token reads.
	if err := strictjson.Unmarshal(payload, c); err != nil {
		return nil, denyErr(InvalidToken, "token_claims", "the access token claims are malformed", err)
	}
	if derr := v.checkTokenClaims(c); derr != nil {
		return nil, derr
	}
	vt.exp = c.Exp.Time
	vt.expLimit = vt.exp.Add(v.cfg.ClockSkew)
	if c.Nbf != nil {
		vt.nbf = c.Nbf.Time
		vt.nbfLimit = vt.nbf.Add(-v.cfg.ClockSkew)
	}
	if v.cfg.Attest != AttestOff {
		vt.readAttest(payload)
	}
	return vt, nil
}

// verifyTokenJWS checks that the token is a compact JWS whose header the
// route accepts, signed by the issuer's key it names, and returns its
// payload.
func (v *Verifier) verifyTokenJWS(ctx context.Context, token string) ([]byte, *Error) {
	// Compact JWS only: three segments, no JWE (five), no JSON serialization.
	if strings.Count(token, ".") != 2 {
		return nil, deny(InvalidToken, "token_malformed", "the access token is not a compact JWS")
	}
	var keyErr *Error
	provider := jws.KeyProviderFunc(func(ctx context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
		key, alg, derr := v.tokenKey(ctx, sig.ProtectedHeaders())
		if derr != nil {
			keyErr = derr
			return keyErr
		}
		sink.Key(jwa.SignatureAlgorithm(alg), key)
		return nil
	})
	payload, err := jws.Verify([]byte(token), jws.WithCompact(), jws.WithKeyProvider(provider), jws.WithContext(ctx))
	if keyErr != nil {
		return nil, keyErr
	}
	if err != nil {
		if _, perr := jws.Parse([]byte(token), jws.WithCompact()); perr != nil {
			return nil, denyErr(InvalidToken, "token_malformed", "the access token is not a valid JWS", perr)
		}
		return nil, denyErr(InvalidToken, "token_signature", "the access token signature is invalid", err)
	}
	return payload, nil
}

// tokenKey checks an access token's protected header and returns the
// issuer's key it names, and the algorithm to verify with.
func (v *Verifier) tokenKey(ctx context.Context, h jws.Headers) (jwk.Key, string, *Error) {
	// typ must be one of the accepted access-token types (RFC 9068 §4 (1), RFC 8725 §3.11).
	if !containsFold(v.cfg.TokenTypes, h.Type()) {
		return nil, "", deny(InvalidToken, "token_typ", "the access token type is not accepted")
	}
	// The algorithm is chosen by the configuration, never by the token (RFC 8725 §3.1).
	alg := h.Algorithm().String()
	if !contains(v.cfg.Algorithms, alg) {
		return nil, "", deny(InvalidToken, "token_alg", "the access token algorithm is not accepted")
	}
	if len(h.Critical()) > 0 {
		return nil, "", deny(InvalidToken, "token_malformed", "the access token has critical header parameters")
	}
	if h.KeyID() == "" {
		return nil, "", deny(InvalidToken, "token_kid", "the access token names no key")
	}
	key, err := v.keys.Key(ctx, h.KeyID())
	if errors.Is(err, ErrUnknownKey) {
		return nil, "", deny(InvalidToken, "token_kid", "the access token is signed with an unknown key")
	}
	if err != nil {
		return nil, "", denyErr(Unavailable, "jwks_unavailable", "the issuer's keys are unavailable", err)
	}
	// The key must be of the type the algorithm needs, and agree with its own alg.
	if err := keyFitsAlg(key, alg, maxIssuerRSA); err != nil {
		return nil, "", denyErr(InvalidToken, "token_alg", "the access token algorithm does not fit the issuer's key", err)
	}
	return key, alg, nil
}

// checkTokenClaims checks the claims of a verified token that do not depend
// on the time, in the order of RFC 9068 §4.
func (v *Verifier) checkTokenClaims(c *accessClaims) *Error {
	// iss must equal the configured issuer exactly (RFC 9068 §4 (3)).
	if c.Iss != v.cfg.Issuer {
		return deny(InvalidToken, "token_issuer", "the access token issuer is not accepted")
	}
	// aud must contain the audience, and be only it where the route says so (RFC 9068 §4 (4)).
	if !contains(c.Aud, v.cfg.Audience) {
		return deny(InvalidToken, "token_audience", "the access token is not meant for this API")
	}
	if v.cfg.SingleAudience && len(c.Aud) != 1 {
		return deny(InvalidToken, "token_audience", "the access token must have this API as its only audience")
	}
	// exp is required (RFC 9068 §2.2).
	if c.Exp == nil {
		return deny(InvalidToken, "token_exp_missing", "the access token has no expiry")
	}
	// client_id is required (RFC 9068 §2.2).
	if c.ClientID == "" {
		return deny(InvalidToken, "token_client_id", "the access token has no client_id")
	}
	// jti is required (RFC 9068 §2.2): it names the token in the audit log.
	if c.JTI == "" {
		return deny(InvalidToken, "token_jti", "the access token has no jti")
	}
	// cnf, when present, must carry a jkt string (RFC 9449 §6.1).
	if c.Cnf != nil && (c.Cnf.JKT == nil || *c.Cnf.JKT == "") {
		return deny(InvalidToken, "token_cnf", "the access token confirmation is malformed")
	}
	return nil
}

// RSA modulus sizes a key may have. Below 2048 bits is too weak (RFC 7518
// §3.3, §3.5). A proof key, chosen by the client, may have at most 4096: the
// cost of a verification grows with the square of the size, and a larger key
// would let any holder of a token make each request cost milliseconds to
// seconds. The issuer's keys are trusted and paid for once per token.
const (
	minRSABits      = 2048
	maxProofRSABits = 4096
	maxIssuerRSA    = 16384
)

// keyFitsAlg checks that key can verify alg: RSA of minRSABits to maxRSABits
// for RS*/PS*, EC on the matching curve for ES*, and that the key's own alg,
// if any, is alg.
func keyFitsAlg(key jwk.Key, alg string, maxRSABits int) error {
	if ka := key.Algorithm().String(); ka != "" && ka != alg {
		return errors.New("the key is for another algorithm")
	}
	switch {
	case strings.HasPrefix(alg, "RS"), strings.HasPrefix(alg, "PS"):
		rk, ok := key.(jwk.RSAPublicKey)
		if !ok {
			return errors.New("algorithm needs a public RSA key")
		}
		if bits := modulusBits(rk.N()); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("the RSA key has %d bits, not %d to %d", bits, minRSABits, maxRSABits)
		}
	case strings.HasPrefix(alg, "ES"):
		ec, ok := key.(jwk.ECDSAPublicKey)
		if !ok {
			return errors.New("algorithm needs a public EC key")
		}
		want := map[string]jwa.EllipticCurveAlgorithm{"ES256": jwa.P256, "ES384": jwa.P384, "ES512": jwa.P521}[alg]
		if ec.Crv() != want {
			return errors.New("the EC curve does not fit the algorithm")
		}
	default:
		return errors.New("unsupported algorithm")
	}
	return nil
}

// modulusBits is the bit length of a big-endian unsigned modulus.
func modulusBits(n []byte) int {
	for len(n) > 0 && n[0] == 0 {
		n = n[1:]
	}
	if len(n) == 0 {
		return 0
	}
	return (len(n)-1)*8 + bits.Len8(n[0])
}

// readOnlyBytes returns the bytes of s without copying them (an access
// token is a kilobyte or more, hashed on every request). Only for functions
// that read their argument and keep nothing of it, like sha256.Sum256.
func readOnlyBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
