package helseidsim_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

func TestStartRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "10.0.0.1:0", ":0", "[::]:0", "example.com:0", "nonsense"} {
		if s, err := helseidsim.Start(helseidsim.Options{Addr: addr}); err == nil {
			s.Close()
			t.Errorf("Start(%q) succeeded, want refusal", addr)
		}
	}
}

func TestStartLocalhost(t *testing.T) {
	s := start(t, helseidsim.Options{Addr: "localhost:0"})
	if got := s.Issuer(); len(got) < len("http://127.0.0.1:1") || got[:17] != "http://127.0.0.1:" {
		t.Errorf("Issuer() = %q, want http://127.0.0.1:PORT", got)
	}
}

func TestDiscovery(t *testing.T) {
	s := start(t, helseidsim.Options{})
	resp, doc := get(t, s.DiscoveryURL())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	want := map[string]string{
		"issuer":         s.Issuer(),
		"jwks_uri":       s.Issuer() + "/.well-known/openid-configuration/jwks",
		"token_endpoint": s.Issuer() + "/connect/token",
	}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("%s = %v, want %q", k, doc[k], v)
		}
	}
	algs, _ := doc["dpop_signing_alg_values_supported"].([]any)
	if len(algs) != 9 {
		t.Errorf("dpop_signing_alg_values_supported = %v", algs)
	}
	if id, _ := doc["id_token_signing_alg_values_supported"].([]any); len(id) != 1 || id[0] != "RS256" {
		t.Errorf("id_token_signing_alg_values_supported = %v", id)
	}
}

func TestJWKSShape(t *testing.T) {
	s := start(t, helseidsim.Options{})
	resp, body := get(t, s.JWKSURI())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	keys, _ := body["keys"].([]any)
	if len(keys) != 1 {
		t.Fatalf("keys = %v", keys)
	}
	k := keys[0].(map[string]any)
	var names []string
	for name := range k {
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"alg", "e", "kid", "kty", "n", "use"}) {
		t.Errorf("JWK members = %v, want only public RSA members", names)
	}
	if k["alg"] != "RS256" || k["use"] != "sig" || k["kty"] != "RSA" || k["kid"] != s.CurrentKid() {
		t.Errorf("JWK = %v", k)
	}
	if !kidRE.MatchString(s.CurrentKid()) {
		t.Errorf("kid %q is not 40 upper-case hex", s.CurrentKid())
	}
}

func TestOutage(t *testing.T) {
	s := start(t, helseidsim.Options{})
	s.SetOutage(true)
	for _, u := range []string{s.DiscoveryURL(), s.JWKSURI()} {
		if resp, _ := get(t, u); resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s during outage: %d, want 503", u, resp.StatusCode)
		}
	}
	s.SetOutage(false)
	for _, u := range []string{s.DiscoveryURL(), s.JWKSURI()} {
		if resp, _ := get(t, u); resp.StatusCode != http.StatusOK {
			t.Errorf("%s after outage: %d, want 200", u, resp.StatusCode)
		}
	}
	if n := s.JWKSFetches(); n != 2 {
		t.Errorf("JWKSFetches() = %d, want 2", n)
	}
}

func TestRotateAndRetire(t *testing.T) {
	s := start(t, helseidsim.Options{})
	kid1 := s.CurrentKid()
	tok1 := mint(t, s, helseidsim.TokenSpec{})

	kid2, err := s.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if kid2 == kid1 || !kidRE.MatchString(kid2) || s.CurrentKid() != kid2 {
		t.Fatalf("Rotate() = %q (old %q, current %q)", kid2, kid1, s.CurrentKid())
	}
	tok2 := mint(t, s, helseidsim.TokenSpec{})
	if h, _ := decode(t, tok2); h.KeyID() != kid2 {
		t.Errorf("new token kid = %q, want %q", h.KeyID(), kid2)
	}

	set := fetchJWKS(t, s)
	if set.Len() != 2 {
		t.Fatalf("JWKS has %d keys after Rotate, want 2", set.Len())
	}
	for _, tok := range []string{tok1, tok2} {
		if _, err := verify(tok, set); err != nil {
			t.Errorf("verify after Rotate: %v", err)
		}
	}

	s.Retire(kid1)
	set = fetchJWKS(t, s)
	if set.Len() != 1 {
		t.Fatalf("JWKS has %d keys after Retire, want 1", set.Len())
	}
	if _, ok := set.LookupKeyID(kid1); ok {
		t.Error("retired kid still published")
	}
	if _, err := verify(tok1, set); err == nil {
		t.Error("token signed by retired key still verifies")
	}
	if _, err := verify(tok2, set); err != nil {
		t.Errorf("token of current key: %v", err)
	}
}

func TestRotateOnCommand(t *testing.T) {
	s, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := s.CurrentKid()
	resp, err := http.Post(s.Issuer()+helseidsim.RotatePath, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Kid string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	if body.Kid == before || body.Kid != s.CurrentKid() {
		t.Fatalf("rotate answered kid %q; before %q, now %q", body.Kid, before, s.CurrentKid())
	}
}
