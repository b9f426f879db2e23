package dpopclient

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/helsegate/helsegate/internal/devkit/jwsheader"
)

// ProofOptions tunes a proof. The zero value gives a correct proof.
type ProofOptions struct {
	JTI               string         // default: base64url of 16 random bytes
	IssuedAt          time.Time      // default: time.Now()
	Nonce             string         // sets the nonce claim when not empty
	OmitATH           bool           // leave ath out even with an access token
	Typ               string         // header typ; default "dpop+jwt"
	OmitJWK           bool           // leave the jwk header out
	IncludePrivateJWK bool           // put the private key in the jwk header (a bad proof)
	Header            map[string]any // merged into the header last; nil deletes; "alg" is ignored (use Alg)
	Claims            map[string]any // merged into the claims last; nil deletes
	// Alg signs with this algorithm instead of the key's (it must fit the
	// key type, e.g. RS512 or PS256 for an RSA key); "none" makes an
	// unsigned proof.
	Alg string
}

// Proof returns a DPoP proof JWT for a request with the given method and
// htu (scheme://host/path, no query). If accessToken is not empty the proof
// carries ath = base64url(SHA-256(accessToken)) unless o.OmitATH.
func (k *Key) Proof(method, htu, accessToken string, o ProofOptions) (string, error) {
	claims := map[string]any{"htm": method, "htu": htu}
	if o.JTI != "" {
		claims["jti"] = o.JTI
	} else {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		claims["jti"] = base64.RawURLEncoding.EncodeToString(b)
	}
	iat := o.IssuedAt
	if iat.IsZero() {
		iat = time.Now()
	}
	claims["iat"] = iat.Unix()
	if o.Nonce != "" {
		claims["nonce"] = o.Nonce
	}
	if accessToken != "" && !o.OmitATH {
		claims["ath"] = ATH(accessToken)
	}
	for name, v := range o.Claims {
		if v == nil {
			delete(claims, name)
		} else {
			claims[name] = v
		}
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("dpopclient: marshal claims: %w", err)
	}

	hdr, err := k.proofHeader(o)
	if err != nil {
		return "", err
	}
	alg := k.alg
	if o.Alg != "" {
		alg = jwa.SignatureAlgorithm(o.Alg)
	}
	var opt jws.SignOption
	if alg == jwa.NoSignature {
		opt = jws.WithInsecureNoSignature(jws.WithProtectedHeaders(hdr))
	} else {
		opt = jws.WithKey(alg, k.raw, jws.WithProtectedHeaders(hdr))
	}
	proof, err := jws.Sign(payload, opt)
	if err != nil {
		return "", fmt.Errorf("dpopclient: sign proof: %w", err)
	}
	return string(proof), nil
}

func (k *Key) proofHeader(o ProofOptions) (jws.Headers, error) {
	hdr := jws.NewHeaders()
	typ := o.Typ
	if typ == "" {
		typ = "dpop+jwt"
	}
	if err := hdr.Set(jws.TypeKey, typ); err != nil {
		return nil, err
	}
	if !o.OmitJWK {
		key := k.PublicJWK()
		if o.IncludePrivateJWK {
			key = k.priv
		}
		if err := hdr.Set(jws.JWKKey, key); err != nil {
			return nil, err
		}
	}
	if err := jwsheader.Merge(hdr, o.Header); err != nil {
		return nil, fmt.Errorf("dpopclient: %w", err)
	}
	return hdr, nil
}

// ATH returns base64url(SHA-256(accessToken)) without padding, the ath
// claim of a proof sent with that token.
func ATH(accessToken string) string {
	sum := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
