package dpopclient_test

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
)

func newKey(t *testing.T, alg string) *dpopclient.Key {
	t.Helper()
	k, err := dpopclient.NewKey(alg)
	if err != nil {
		t.Fatalf("NewKey(%s): %v", alg, err)
	}
	return k
}

func TestNewKeyRejectsUnknownAlg(t *testing.T) {
	for _, alg := range []string{"", "HS256", "none", "EdDSA", "ES256K"} {
		if _, err := dpopclient.NewKey(alg); err == nil {
			t.Errorf("NewKey(%q) succeeded", alg)
		}
	}
}

func TestThumbprintMatchesJWX(t *testing.T) {
	for _, alg := range []string{"ES256", "ES384", "ES512", "RS256"} {
		k := newKey(t, alg)
		pub := k.PublicJWK()
		if ok, _ := jwk.IsPrivateKey(pub); ok {
			t.Fatalf("%s: PublicJWK is private", alg)
		}
		var raw any
		if err := pub.Raw(&raw); err != nil {
			t.Fatal(err)
		}
		fresh, err := jwk.FromRaw(raw)
		if err != nil {
			t.Fatal(err)
		}
		tp, err := fresh.Thumbprint(crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if want := base64.RawURLEncoding.EncodeToString(tp); k.Thumbprint() != want {
			t.Errorf("%s: Thumbprint() = %q, jwx says %q", alg, k.Thumbprint(), want)
		}
		if len(k.Thumbprint()) != 43 {
			t.Errorf("%s: thumbprint length %d, want 43", alg, len(k.Thumbprint()))
		}
	}
}

func TestMarshalLoadRoundTrip(t *testing.T) {
	for _, alg := range []string{"ES384", "PS256"} {
		k := newKey(t, alg)
		data, err := k.MarshalPrivateJWK()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil || m["d"] == nil || m["alg"] != alg {
			t.Fatalf("%s: private JWK = %s (%v)", alg, data, err)
		}
		k2, err := dpopclient.LoadKey(data)
		if err != nil {
			t.Fatalf("%s: LoadKey: %v", alg, err)
		}
		if k2.Alg() != alg || k2.Thumbprint() != k.Thumbprint() {
			t.Errorf("%s: loaded alg %q thumbprint %q, want %q", alg, k2.Alg(), k2.Thumbprint(), k.Thumbprint())
		}
		p, err := k2.Proof("GET", "https://api.example/x", "", dpopclient.ProofOptions{})
		if err != nil {
			t.Fatal(err)
		}
		verifyProof(t, p, k.PublicJWK())
	}
}

func TestLoadKeyRefusesPublicAndMismatch(t *testing.T) {
	k := newKey(t, "ES256")
	pub, _ := json.Marshal(k.PublicJWK())
	if _, err := dpopclient.LoadKey(pub); err == nil {
		t.Error("LoadKey accepted a public key")
	}
	data, _ := k.MarshalPrivateJWK()
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	m["alg"] = "RS256"
	bad, _ := json.Marshal(m)
	if _, err := dpopclient.LoadKey(bad); err == nil {
		t.Error("LoadKey accepted alg RS256 on an EC key")
	}
	delete(m, "alg")
	noAlg, _ := json.Marshal(m)
	if k2, err := dpopclient.LoadKey(noAlg); err != nil || k2.Alg() != "ES256" {
		t.Errorf("LoadKey without alg: %v, %v", k2, err)
	}
}
