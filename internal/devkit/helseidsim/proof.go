package helseidsim

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// ProofMaxSkew is how far a token-endpoint proof's iat may be from the
// server clock, in either direction.
const ProofMaxSkew = 60 * time.Second

type proofClaims struct {
	JTI string   `json:"jti"`
	HTM string   `json:"htm"`
	HTU string   `json:"htu"`
	IAT *float64 `json:"iat"`
}

// checkProof validates a DPoP proof sent to the token endpoint (RFC 9449
// §4.3) and returns the RFC 7638 thumbprint of its key.
func (s *Server) checkProof(values []string) (string, error) {
	if len(values) == 0 {
		return "", errors.New("missing DPoP proof")
	}
	if len(values) > 1 {
		return "", errors.New("more than one DPoP header")
	}
	raw := []byte(values[0])
	msg, err := jws.Parse(raw)
	if err != nil {
		return "", errors.New("proof is not a JWS")
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 {
		return "", errors.New("proof must have one signature")
	}
	hdr := sigs[0].ProtectedHeaders()
	if hdr.Type() != "dpop+jwt" {
		return "", errors.New("proof typ must be dpop+jwt")
	}
	alg := hdr.Algorithm()
	if !slices.Contains(dpopAlgs, alg.String()) {
		return "", fmt.Errorf("proof alg %q not supported", alg)
	}
	key := hdr.JWK()
	if key == nil {
		return "", errors.New("proof has no jwk header")
	}
	if priv, err := jwk.IsPrivateKey(key); err != nil || priv {
		return "", errors.New("proof jwk must be a public key")
	}
	if _, err := jws.Verify(raw, jws.WithKey(jwa.SignatureAlgorithm(alg), key)); err != nil {
		return "", errors.New("proof signature does not verify")
	}

	var c proofClaims
	if err := json.Unmarshal(msg.Payload(), &c); err != nil {
		return "", errors.New("proof payload is not a JSON object")
	}
	if c.JTI == "" {
		return "", errors.New("proof has no jti")
	}
	if c.HTM != "POST" {
		return "", errors.New("proof htm must be POST")
	}
	if !sameHTU(c.HTU, s.TokenEndpoint()) {
		return "", errors.New("proof htu does not match the token endpoint")
	}
	if c.IAT == nil || math.IsNaN(*c.IAT) {
		return "", errors.New("proof has no iat")
	}
	now := s.now()
	iat := time.Unix(int64(*c.IAT), 0)
	if iat.Before(now.Add(-ProofMaxSkew)) || iat.After(now.Add(ProofMaxSkew)) {
		return "", errors.New("proof iat outside the allowed window")
	}
	if s.replayed(c.JTI, now) {
		return "", errors.New("proof jti already used")
	}

	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", errors.New("cannot compute jwk thumbprint")
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// sameHTU compares htu with the endpoint, ignoring query and fragment
// (RFC 9449 §4.3).
func sameHTU(htu, endpoint string) bool {
	u, err := url.Parse(htu)
	if err != nil {
		return false
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.String() == endpoint
}

// replayed records jti and reports whether it was seen within the window.
func (s *Server) replayed(jti string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, t := range s.seenJTI {
		if now.Sub(t) > 2*ProofMaxSkew {
			delete(s.seenJTI, k)
		}
	}
	if _, ok := s.seenJTI[jti]; ok {
		return true
	}
	s.seenJTI[jti] = now
	return false
}
