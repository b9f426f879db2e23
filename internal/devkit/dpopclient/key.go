// Package dpopclient is a DPoP (RFC 9449) client for tests and for
// `helsegate call`: it holds a proof key, signs proofs (including
// deliberately broken ones) and fetches DPoP-bound tokens with
// client_credentials from a token endpoint such as helseidsim's.
package dpopclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// Key is a DPoP proof key with its signing algorithm.
type Key struct {
	alg  jwa.SignatureAlgorithm
	priv jwk.Key // private JWK, alg member set
	raw  any     // *rsa.PrivateKey or *ecdsa.PrivateKey
}

// NewKey generates a proof key for alg: ES256, ES384, ES512 (P-256, P-384,
// P-521) or RS256, RS384, RS512, PS256, PS384, PS512 (RSA 2048).
func NewKey(alg string) (*Key, error) {
	var raw any
	var err error
	switch alg {
	case "ES256":
		raw, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		raw, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		raw, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		raw, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, fmt.Errorf("dpopclient: unsupported alg %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("dpopclient: generate key: %w", err)
	}
	priv, err := jwk.FromRaw(raw)
	if err != nil {
		return nil, err
	}
	if err := priv.Set(jwk.AlgorithmKey, jwa.SignatureAlgorithm(alg)); err != nil {
		return nil, err
	}
	return &Key{alg: jwa.SignatureAlgorithm(alg), priv: priv, raw: raw}, nil
}

// LoadKey parses a private JWK as written by MarshalPrivateJWK. The
// algorithm comes from its "alg" member; without one, EC keys get the
// algorithm of their curve and RSA keys get RS256.
func LoadKey(data []byte) (*Key, error) {
	priv, err := jwk.ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("dpopclient: parse JWK: %w", err)
	}
	if ok, err := jwk.IsPrivateKey(priv); err != nil || !ok {
		return nil, errors.New("dpopclient: JWK is not a private key")
	}
	var raw any
	if err := priv.Raw(&raw); err != nil {
		return nil, fmt.Errorf("dpopclient: JWK: %w", err)
	}
	alg := priv.Algorithm().String()
	if alg == "" {
		switch k := raw.(type) {
		case *ecdsa.PrivateKey:
			alg = map[string]string{"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[k.Curve.Params().Name]
		case *rsa.PrivateKey:
			alg = "RS256"
		}
	}
	if err := checkAlg(alg, raw); err != nil {
		return nil, err
	}
	if err := priv.Set(jwk.AlgorithmKey, jwa.SignatureAlgorithm(alg)); err != nil {
		return nil, err
	}
	return &Key{alg: jwa.SignatureAlgorithm(alg), priv: priv, raw: raw}, nil
}

// checkAlg reports whether alg is a DPoP algorithm matching the raw key.
func checkAlg(alg string, raw any) error {
	switch k := raw.(type) {
	case *ecdsa.PrivateKey:
		want := map[string]string{"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
		if want != "" && want == k.Curve.Params().Name {
			return nil
		}
	case *rsa.PrivateKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return nil
		}
	}
	return fmt.Errorf("dpopclient: alg %q does not fit key type %T", alg, raw)
}

// MarshalPrivateJWK returns the private key as a JWK (JSON), including its
// alg, for saving to a file and reloading with LoadKey. Keep it secret.
func (k *Key) MarshalPrivateJWK() ([]byte, error) {
	return json.Marshal(k.priv)
}

// Alg returns the proof signing algorithm, e.g. "ES256".
func (k *Key) Alg() string { return k.alg.String() }

// PublicJWK returns a fresh copy of the public key as it goes in a proof's
// jwk header, shaped like HelseID's client libraries send it: kty, n, e and
// alg for RSA; kty, crv, x, y for EC.
func (k *Key) PublicJWK() jwk.Key {
	pub, err := k.priv.PublicKey()
	if err == nil && pub.KeyType() == jwa.EC {
		err = pub.Remove(jwk.AlgorithmKey)
	}
	if err != nil {
		// Cannot happen for keys built by NewKey or LoadKey.
		panic("dpopclient: public key: " + err.Error())
	}
	return pub
}

// Thumbprint returns the RFC 7638 SHA-256 JWK thumbprint, base64url without
// padding: the value a bound token carries in cnf.jkt.
func (k *Key) Thumbprint() string {
	tp, err := k.priv.Thumbprint(crypto.SHA256)
	if err != nil {
		panic("dpopclient: thumbprint: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}
