package helseidsim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// Rotate creates a new RSA 2048 signing key, publishes it in the JWKS and
// makes it the key for new tokens. Earlier keys stay published until
// Retire. It returns the new kid.
func (s *Server) Rotate() (string, error) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("helseidsim: generate key: %w", err)
	}
	kid, err := kidOf(&priv.PublicKey)
	if err != nil {
		return "", err
	}
	k := &signingKey{kid: kid, priv: priv, published: true}
	s.mu.Lock()
	s.keys = append(s.keys, k)
	s.current = k
	s.mu.Unlock()
	return kid, nil
}

// Retire removes kid from the JWKS. If kid is the current signing key, new
// tokens are still signed with it (and so no longer verify) until Rotate.
// Unknown kids are ignored.
func (s *Server) Retire(kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.keys {
		if k.kid == kid {
			k.published = false
		}
	}
}

// CurrentKid returns the kid new tokens are signed with.
func (s *Server) CurrentKid() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current.kid
}

// kidOf returns a HelseID-style kid: 40 upper-case hex characters, here the
// SHA-1 of the public key's DER (HelseID uses the certificate's SHA-1).
func kidOf(pub *rsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("helseidsim: marshal public key: %w", err)
	}
	sum := sha1.Sum(der)
	return strings.ToUpper(hex.EncodeToString(sum[:])), nil
}

// publicSet returns the published keys as a JWK set: kty, n, e, kid,
// alg RS256, use sig.
func (s *Server) publicSet() (jwk.Set, error) {
	s.mu.Lock()
	var pubs []*signingKey
	for _, k := range s.keys {
		if k.published {
			pubs = append(pubs, k)
		}
	}
	s.mu.Unlock()

	set := jwk.NewSet()
	for _, k := range pubs {
		key, err := jwk.FromRaw(&k.priv.PublicKey)
		if err != nil {
			return nil, err
		}
		for name, v := range map[string]any{
			jwk.KeyIDKey:     k.kid,
			jwk.AlgorithmKey: jwa.RS256,
			jwk.KeyUsageKey:  jwk.ForSignature,
		} {
			if err := key.Set(name, v); err != nil {
				return nil, err
			}
		}
		if err := set.AddKey(key); err != nil {
			return nil, err
		}
	}
	return set, nil
}
