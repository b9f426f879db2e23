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
	key, payload, err := verifyProofJWS([]byte(values[0]))
	if err != nil {
		return "", err
	}
	if err := s.checkProofClaims(payload); err != nil {
		return "", err
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", errors.New("cannot compute jwk thumbprint")
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// verifyProofJWS checks the proof as a JWS (RFC 9449 §4.3 steps 2 and 4-7:
// one signature, typ dpop+jwt, a supported alg, a public jwk, a signature
// that verifies with that jwk) and returns the jwk and the payload.
func verifyProofJWS(raw []byte) (jwk.Key, []byte, error) {
	msg, err := jws.Parse(raw)
	if err != nil {
		return nil, nil, errors.New("proof is not a JWS")
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 {
		return nil, nil, errors.New("proof must have one signature")
	}
	hdr := sigs[0].ProtectedHeaders()
	if hdr.Type() != "dpop+jwt" {
		return nil, nil, errors.New("proof typ must be dpop+jwt")
	}
	alg := hdr.Algorithm()
	if !slices.Contains(dpopAlgs, alg.String()) {
		return nil, nil, fmt.Errorf("proof alg %q not supported", alg)
	}
	key := hdr.JWK()
	if key == nil {
		return nil, nil, errors.New("proof has no jwk header")
	}
	if priv, err := jwk.IsPrivateKey(key); err != nil || priv {
		return nil, nil, errors.New("proof jwk must be a public key")
	}
	if _, err := jws.Verify(raw, jws.WithKey(jwa.SignatureAlgorithm(alg), key)); err != nil {
		return nil, nil, errors.New("proof signature does not verify")
	}
	return key, msg.Payload(), nil
}

// checkProofClaims checks the proof's claims (RFC 9449 §4.3 steps 3, 8, 9
// and 11): a jti, htm POST, htu the token endpoint, iat within
// ProofMaxSkew of the server clock; and that the jti was not used before
// (RFC 9449 §11.1).
func (s *Server) checkProofClaims(payload []byte) error {
	var c proofClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return errors.New("proof payload is not a JSON object")
	}
	if c.JTI == "" {
		return errors.New("proof has no jti")
	}
	if c.HTM != "POST" {
		return errors.New("proof htm must be POST")
	}
	if !sameHTU(c.HTU, s.TokenEndpoint()) {
		return errors.New("proof htu does not match the token endpoint")
	}
	if c.IAT == nil || math.IsNaN(*c.IAT) {
		return errors.New("proof has no iat")
	}
	now := s.now()
	iat := time.Unix(int64(*c.IAT), 0)
	if iat.Before(now.Add(-ProofMaxSkew)) || iat.After(now.Add(ProofMaxSkew)) {
		return errors.New("proof iat outside the allowed window")
	}
	if s.replayed(c.JTI, now) {
		return errors.New("proof jti already used")
	}
	return nil
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
