package helseidsim_test

import (
	"crypto/rand"
	"crypto/rsa"
	"slices"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

func TestMintVerifiesWithClaims(t *testing.T) {
	s := start(t, helseidsim.Options{})
	tok := mint(t, s, helseidsim.TokenSpec{
		OrgParent:   "917897468",
		OrgChild:    "922734046",
		OrgSupplier: "994598759",
		Tenancy:     "multi-tenant",
		JKT:         "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
	})

	tk, err := verify(tok, fetchJWKS(t, s))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if tk.Issuer() != s.Issuer() {
		t.Errorf("iss = %q", tk.Issuer())
	}
	if !slices.Equal(tk.Audience(), []string{"nhn:kjernejournal"}) {
		t.Errorf("aud = %v", tk.Audience())
	}
	if tk.Expiration().Sub(tk.IssuedAt()) != 10*time.Minute {
		t.Errorf("lifetime = %v", tk.Expiration().Sub(tk.IssuedAt()))
	}

	h, c := decode(t, tok)
	if h.Type() != "at+jwt" || h.Algorithm().String() != "RS256" || h.KeyID() != s.CurrentKid() {
		t.Errorf("header typ=%q alg=%q kid=%q", h.Type(), h.Algorithm(), h.KeyID())
	}
	want := map[string]any{
		"aud":       "nhn:kjernejournal", // one audience: a JSON string
		"client_id": helseidsim.DefaultClientID,
		"helseid://claims/client/claims/orgnr_parent":   "917897468",
		"helseid://claims/client/claims/orgnr_child":    "922734046",
		"helseid://claims/client/claims/orgnr_supplier": "994598759",
		"helseid://claims/client/client_tenancy":        "multi-tenant",
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("%s = %#v, want %#v", k, c[k], v)
		}
	}
	if sc, ok := c["scope"].([]any); !ok || len(sc) != 1 || sc[0] != "nhn:kjernejournal/api" {
		t.Errorf("scope = %#v, want JSON array", c["scope"])
	}
	if cnf, _ := c["cnf"].(map[string]any); cnf["jkt"] != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" {
		t.Errorf("cnf = %#v", c["cnf"])
	}
	if jti, _ := c["jti"].(string); len(jti) < 16 {
		t.Errorf("jti = %#v", c["jti"])
	}
	for _, absent := range []string{helseidsim.ClaimPID, helseidsim.ClaimSecurityLevel, "sub"} {
		if _, ok := c[absent]; ok {
			t.Errorf("machine token carries %s", absent)
		}
	}
}

func TestMintShapes(t *testing.T) {
	s := start(t, helseidsim.Options{})
	_, c := decode(t, mint(t, s, helseidsim.TokenSpec{
		Audience:      []string{"nhn:kjernejournal", "nhn:msh"},
		Scopes:        []string{"a", "b"},
		ScopeAsString: true,
		PID:           "17056600574",
		SecurityLevel: "4",
		Extra:         map[string]any{"jti": nil, "sub": "x"},
	}))
	if aud, ok := c["aud"].([]any); !ok || len(aud) != 2 {
		t.Errorf("aud = %#v, want array of two", c["aud"])
	}
	if c["scope"] != "a b" {
		t.Errorf("scope = %#v", c["scope"])
	}
	if c[helseidsim.ClaimSecurityLevel] != "4" || c[helseidsim.ClaimPID] != "17056600574" {
		t.Errorf("user claims: %v", c)
	}
	if _, ok := c["jti"]; ok || c["sub"] != "x" {
		t.Errorf("Extra not applied: %v", c)
	}
	if _, ok := c["cnf"]; ok {
		t.Error("unbound token has cnf")
	}
}

func TestMintNegative(t *testing.T) {
	fixed := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := start(t, helseidsim.Options{Clock: func() time.Time { return fixed }})
	set := fetchJWKS(t, s)
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	tok := mint(t, s, helseidsim.TokenSpec{SignWith: foreign})
	if h, _ := decode(t, tok); h.KeyID() != s.CurrentKid() {
		t.Errorf("SignWith kid = %q, want current kid", h.KeyID())
	}
	if _, err := verify(tok, set); err == nil {
		t.Error("token signed with a foreign key verifies")
	}

	h, c := decode(t, mint(t, s, helseidsim.TokenSpec{
		Typ: "JWT", Kid: "DEADBEEF", Alg: "PS256", Issuer: "https://helseid-sts.nhn.no",
		OmitExp: true, Header: map[string]any{"x-test": "1"},
	}))
	if h.Type() != "JWT" || h.KeyID() != "DEADBEEF" || h.Algorithm().String() != "PS256" {
		t.Errorf("header = typ %q kid %q alg %q", h.Type(), h.KeyID(), h.Algorithm())
	}
	if v, _ := h.Get("x-test"); v != "1" {
		t.Errorf("extra header = %v", v)
	}
	if _, ok := c["exp"]; ok || c["iss"] != "https://helseid-sts.nhn.no" {
		t.Errorf("claims = %v", c)
	}
	if c["iat"] != float64(fixed.Unix()) || c["nbf"] != float64(fixed.Unix()) {
		t.Errorf("iat/nbf = %v/%v, want the injected clock", c["iat"], c["nbf"])
	}

	h, _ = decode(t, mint(t, s, helseidsim.TokenSpec{Alg: "none", Header: map[string]any{"kid": nil, "typ": nil}}))
	if h.Algorithm().String() != "none" || h.KeyID() != "" || h.Type() != "" {
		t.Errorf("none header = alg %q kid %q typ %q", h.Algorithm(), h.KeyID(), h.Type())
	}

	_, c = decode(t, mint(t, s, helseidsim.TokenSpec{
		IssuedAt: fixed.Add(-time.Hour), Lifetime: time.Minute, NotBefore: fixed.Add(time.Hour),
	}))
	if c["exp"] != float64(fixed.Add(-59*time.Minute).Unix()) || c["nbf"] != float64(fixed.Add(time.Hour).Unix()) {
		t.Errorf("exp/nbf = %v/%v", c["exp"], c["nbf"])
	}
}
