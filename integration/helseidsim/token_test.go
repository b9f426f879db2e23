package helseidsim_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/integration/dpopclient"
	"github.com/helsegate/helsegate/integration/helseidsim"
)

func TestTokenEndpointBindsJKT(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key, err := dpopclient.NewKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), url.Values{
		"client_id":    {"my-client"},
		"scope":        {"nhn:kjernejournal/api openid"},
		"resource":     {"nhn:kjernejournal"},
		"orgnr_parent": {"917897468"},
		"orgnr_child":  {"922734046"},
	})
	if err != nil {
		t.Fatalf("FetchToken: %v", err)
	}
	if _, err := verify(tok, fetchJWKS(t, s)); err != nil {
		t.Fatalf("verify: %v", err)
	}
	_, c := decode(t, tok)
	if cnf, _ := c["cnf"].(map[string]any); cnf["jkt"] != key.Thumbprint() {
		t.Errorf("cnf = %v, want jkt %q", c["cnf"], key.Thumbprint())
	}
	if c["client_id"] != "my-client" || c["aud"] != "nhn:kjernejournal" ||
		c[helseidsim.ClaimOrgParent] != "917897468" || c[helseidsim.ClaimOrgChild] != "922734046" {
		t.Errorf("claims = %v", c)
	}
	if sc, _ := c["scope"].([]any); len(sc) != 2 {
		t.Errorf("scope = %#v", c["scope"])
	}
	if _, ok := c[helseidsim.ClaimPID]; ok {
		t.Error("machine token has pid")
	}
}

func TestTokenEndpointUserToken(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key, err := dpopclient.NewKey("PS256")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), url.Values{
		"user": {"true"}, "pid": {"17056600574"}, "security_level": {"3"}, "hpr_number": {"431001110"},
	})
	if err != nil {
		t.Fatalf("FetchToken: %v", err)
	}
	_, c := decode(t, tok)
	for k, v := range map[string]any{
		helseidsim.ClaimPID:           "17056600574",
		helseidsim.ClaimSecurityLevel: "3", // a string, as HelseID sends it
		helseidsim.ClaimHPRNumber:     "431001110",
		"aud":                         helseidsim.DefaultAudience,
	} {
		if c[k] != v {
			t.Errorf("%s = %#v, want %#v", k, c[k], v)
		}
	}
}

func TestTokenEndpointResponse(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key, _ := dpopclient.NewKey("ES256")
	proof, err := key.Proof("POST", s.TokenEndpoint(), "", dpopclient.ProofOptions{})
	if err != nil {
		t.Fatal(err)
	}
	status, body := postToken(t, s, []string{proof}, "grant_type=client_credentials&scope=a+b")
	if status != http.StatusOK || body["token_type"] != "DPoP" || body["scope"] != "a b" ||
		body["expires_in"] != float64(600) || body["access_token"] == "" {
		t.Errorf("%d %v", status, body)
	}
}

func TestTokenEndpointRejects(t *testing.T) {
	now := time.Now()
	s := start(t, helseidsim.Options{Clock: func() time.Time { return now }})
	key, err := dpopclient.NewKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	ep := s.TokenEndpoint()
	proof := func(method, htu string, o dpopclient.ProofOptions) string {
		p, err := key.Proof(method, htu, "", o)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := proof("POST", ep, dpopclient.ProofOptions{})
	parts := strings.Split(proof("POST", ep, dpopclient.ProofOptions{}), ".")
	otherPayload := strings.Split(proof("POST", ep, dpopclient.ProofOptions{JTI: "zzz"}), ".")[1]
	tampered := parts[0] + "." + otherPayload + "." + parts[2]
	replay := proof("POST", ep, dpopclient.ProofOptions{JTI: "replayed"})
	if status, _ := postToken(t, s, []string{replay}, "grant_type=client_credentials"); status != 200 {
		t.Fatalf("first use of proof: %d", status)
	}

	cases := []struct {
		name   string
		proofs []string
		form   string
		code   string
	}{
		{"missing proof", nil, "", "invalid_dpop_proof"},
		{"two proofs", []string{good, good}, "", "invalid_dpop_proof"},
		{"garbage", []string{"not.a.jwt"}, "", "invalid_dpop_proof"},
		{"wrong htm", []string{proof("GET", ep, dpopclient.ProofOptions{})}, "", "invalid_dpop_proof"},
		{"wrong htu", []string{proof("POST", s.Issuer()+"/other", dpopclient.ProofOptions{})}, "", "invalid_dpop_proof"},
		{"old iat", []string{proof("POST", ep, dpopclient.ProofOptions{IssuedAt: now.Add(-2 * time.Minute)})}, "", "invalid_dpop_proof"},
		{"future iat", []string{proof("POST", ep, dpopclient.ProofOptions{IssuedAt: now.Add(2 * time.Minute)})}, "", "invalid_dpop_proof"},
		{"wrong typ", []string{proof("POST", ep, dpopclient.ProofOptions{Typ: "JWT"})}, "", "invalid_dpop_proof"},
		{"no jwk", []string{proof("POST", ep, dpopclient.ProofOptions{OmitJWK: true})}, "", "invalid_dpop_proof"},
		{"private jwk", []string{proof("POST", ep, dpopclient.ProofOptions{IncludePrivateJWK: true})}, "", "invalid_dpop_proof"},
		{"alg none", []string{proof("POST", ep, dpopclient.ProofOptions{Alg: "none"})}, "", "invalid_dpop_proof"},
		{"no jti", []string{proof("POST", ep, dpopclient.ProofOptions{Claims: map[string]any{"jti": nil}})}, "", "invalid_dpop_proof"},
		{"no iat", []string{proof("POST", ep, dpopclient.ProofOptions{Claims: map[string]any{"iat": nil}})}, "", "invalid_dpop_proof"},
		{"bad signature", []string{tampered}, "", "invalid_dpop_proof"},
		{"replayed jti", []string{replay}, "", "invalid_dpop_proof"},
		{"wrong grant", []string{good}, "grant_type=password", "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			form := tc.form
			if form == "" {
				form = "grant_type=client_credentials"
			}
			status, body := postToken(t, s, tc.proofs, form)
			t.Logf("%d %v", status, body["error_description"])
			if status != http.StatusBadRequest || body["error"] != tc.code {
				t.Errorf("got %d %v, want 400 %s", status, body, tc.code)
			}
		})
	}
}

func TestFetchTokenError(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key, _ := dpopclient.NewKey("RS256")
	_, err := key.FetchToken(context.Background(), s.TokenEndpoint(), url.Values{"grant_type": {"password"}})
	var te *dpopclient.TokenError
	if !errors.As(err, &te) || te.Status != 400 || te.Code != "invalid_request" {
		t.Errorf("err = %v", err)
	}
}
