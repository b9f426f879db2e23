package dpopclient_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
)

// verifyProof checks p with jwx against want (or, if nil, its embedded
// jwk) and returns its header and claims.
func verifyProof(t *testing.T, p string, want jwk.Key) (jws.Headers, map[string]any) {
	t.Helper()
	msg, err := jws.Parse([]byte(p))
	if err != nil {
		t.Fatalf("parse proof: %v", err)
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	key := want
	if key == nil {
		key = h.JWK()
	}
	if key == nil {
		t.Fatal("proof has no jwk")
	}
	if _, err := jws.Verify([]byte(p), jws.WithKey(h.Algorithm(), key)); err != nil {
		t.Fatalf("verify proof: %v", err)
	}
	var c map[string]any
	if err := json.Unmarshal(msg.Payload(), &c); err != nil {
		t.Fatal(err)
	}
	return h, c
}

func TestProofAllAlgs(t *testing.T) {
	const token = "eyJhbGciOiJSUzI1NiJ9.e30.sig"
	sum := sha256.Sum256([]byte(token))
	wantATH := base64.RawURLEncoding.EncodeToString(sum[:])
	for _, alg := range []string{"ES256", "ES384", "ES512", "RS256", "PS256"} {
		t.Run(alg, func(t *testing.T) {
			k := newKey(t, alg)
			before := time.Now().Unix()
			p, err := k.Proof("GET", "https://api.example/kj/v1/x", token, dpopclient.ProofOptions{})
			if err != nil {
				t.Fatal(err)
			}
			h, c := verifyProof(t, p, nil)
			if h.Type() != "dpop+jwt" || h.Algorithm() != jwa.SignatureAlgorithm(alg) {
				t.Errorf("header typ %q alg %q", h.Type(), h.Algorithm())
			}
			if ok, _ := jwk.IsPrivateKey(h.JWK()); ok {
				t.Error("jwk header holds a private key")
			}
			members, _ := json.Marshal(h.JWK())
			var m map[string]any
			_ = json.Unmarshal(members, &m)
			wantN := map[byte]int{'E': 4, 'R': 4, 'P': 4}[alg[0]] // EC: kty crv x y; RSA: kty n e alg
			if len(m) != wantN || (alg[0] == 'E') == (m["alg"] != nil) {
				t.Errorf("jwk header members = %v", m)
			}
			if !jwk.Equal(h.JWK(), k.PublicJWK()) {
				t.Error("jwk header is not the key's public JWK")
			}
			if c["htm"] != "GET" || c["htu"] != "https://api.example/kj/v1/x" || c["ath"] != wantATH {
				t.Errorf("claims = %v", c)
			}
			if dpopclient.ATH(token) != wantATH {
				t.Errorf("ATH() = %q", dpopclient.ATH(token))
			}
			iat, _ := c["iat"].(float64)
			if int64(iat) < before || int64(iat) > time.Now().Unix() {
				t.Errorf("iat = %v", c["iat"])
			}
			jti, _ := c["jti"].(string)
			if b, err := base64.RawURLEncoding.DecodeString(jti); err != nil || len(b) != 16 {
				t.Errorf("jti = %q, want base64url of 16 bytes", jti)
			}
			if _, ok := c["nonce"]; ok {
				t.Error("unexpected nonce")
			}
		})
	}
}

func TestProofOptions(t *testing.T) {
	k := newKey(t, "RS256")
	iat := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

	_, c := verifyProof(t, mustProof(t, k, "tok", dpopclient.ProofOptions{OmitATH: true}), nil)
	if _, ok := c["ath"]; ok {
		t.Error("OmitATH: ath present")
	}
	_, c = verifyProof(t, mustProof(t, k, "", dpopclient.ProofOptions{}), nil)
	if _, ok := c["ath"]; ok {
		t.Error("no token: ath present")
	}

	h, c := verifyProof(t, mustProof(t, k, "tok", dpopclient.ProofOptions{
		JTI: "fixed", IssuedAt: iat, Nonce: "n1", Typ: "JWT", Alg: "PS512",
		Header: map[string]any{"kid": "k1"},
		Claims: map[string]any{"htu": "https://evil.example/", "ath": nil, "extra": "x"},
	}), nil)
	if h.Type() != "JWT" || h.Algorithm() != jwa.PS512 || h.KeyID() != "k1" {
		t.Errorf("header typ %q alg %q kid %q", h.Type(), h.Algorithm(), h.KeyID())
	}
	if c["jti"] != "fixed" || c["iat"] != float64(iat.Unix()) || c["nonce"] != "n1" ||
		c["htu"] != "https://evil.example/" || c["extra"] != "x" {
		t.Errorf("claims = %v", c)
	}
	if _, ok := c["ath"]; ok {
		t.Error("Claims nil did not delete ath")
	}

	msg, err := jws.Parse([]byte(mustProof(t, k, "", dpopclient.ProofOptions{OmitJWK: true})))
	if err != nil || msg.Signatures()[0].ProtectedHeaders().JWK() != nil {
		t.Errorf("OmitJWK: jwk present (%v)", err)
	}

	msg, err = jws.Parse([]byte(mustProof(t, k, "", dpopclient.ProofOptions{IncludePrivateJWK: true})))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := jwk.IsPrivateKey(msg.Signatures()[0].ProtectedHeaders().JWK()); !ok {
		t.Error("IncludePrivateJWK: jwk header is not private")
	}

	msg, err = jws.Parse([]byte(mustProof(t, k, "", dpopclient.ProofOptions{Alg: "none"})))
	if err != nil || msg.Signatures()[0].ProtectedHeaders().Algorithm() != jwa.NoSignature {
		t.Errorf("Alg none: %v", err)
	}

	if _, err := k.Proof("GET", "https://a/", "", dpopclient.ProofOptions{Alg: "ES256"}); err == nil {
		t.Error("ES256 with an RSA key succeeded")
	}
}

func mustProof(t *testing.T, k *dpopclient.Key, token string, o dpopclient.ProofOptions) string {
	t.Helper()
	p, err := k.Proof("POST", "https://api.example/x", token, o)
	if err != nil {
		t.Fatalf("Proof: %v", err)
	}
	return p
}
