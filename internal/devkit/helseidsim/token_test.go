package helseidsim_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

func TestTokenEndpointBindsJKT(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key := newKey(t, "ES256")
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
	// HelseID names the tenancy of the client in every token.
	if c[helseidsim.ClaimTenancy] != helseidsim.TenancySingle {
		t.Errorf("%s = %#v, want %q", helseidsim.ClaimTenancy, c[helseidsim.ClaimTenancy], helseidsim.TenancySingle)
	}
	for _, user := range []string{helseidsim.ClaimPID, helseidsim.ClaimSecurityLevel, helseidsim.ClaimAssuranceLevel, "sub"} {
		if _, ok := c[user]; ok {
			t.Errorf("machine token has %s", user)
		}
	}
}

func TestTokenEndpointTenancy(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key := newKey(t, "ES256")
	for _, tc := range []struct {
		name string
		form url.Values
		want string
	}{
		{"no supplier", url.Values{"orgnr_parent": {"917897468"}}, helseidsim.TenancySingle},
		{"supplier", url.Values{"orgnr_parent": {"917897468"}, "orgnr_supplier": {"994598759"}}, helseidsim.TenancyMulti},
		{"asked for", url.Values{"tenancy": {"none"}}, helseidsim.TenancyNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), tc.form)
			if err != nil {
				t.Fatalf("FetchToken: %v", err)
			}
			if _, c := decode(t, tok); c["helseid://claims/client/client_tenancy"] != tc.want {
				t.Errorf("client_tenancy = %#v, want %q", c["helseid://claims/client/client_tenancy"], tc.want)
			}
		})
	}
	_, err := key.FetchToken(context.Background(), s.TokenEndpoint(), url.Values{"tenancy": {"dual-tenant"}})
	var te *dpopclient.TokenError
	if !errors.As(err, &te) || te.Code != "invalid_request" {
		t.Errorf("unknown tenancy: err = %v, want invalid_request", err)
	}
}

func TestTokenEndpointUserToken(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key := newKey(t, "PS256")
	tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), url.Values{
		"user": {"true"}, "pid": {"17056600574"}, "security_level": {"3"}, "hpr_number": {"431001110"},
	})
	if err != nil {
		t.Fatalf("FetchToken: %v", err)
	}
	_, c := decode(t, tok)
	for k, v := range map[string]any{
		helseidsim.ClaimPID:            "17056600574",
		helseidsim.ClaimSecurityLevel:  "3", // a string, as HelseID sends it
		helseidsim.ClaimAssuranceLevel: "substantial",
		helseidsim.ClaimHPRNumber:      "431001110",
		helseidsim.ClaimTenancy:        helseidsim.TenancySingle,
		"aud":                          helseidsim.DefaultAudience,
	} {
		if c[k] != v {
			t.Errorf("%s = %#v, want %#v", k, c[k], v)
		}
	}

	// sub is an opaque pseudonym: present, not the pid, the same for the
	// same person at the same client, different for another person.
	sub, _ := c["sub"].(string)
	if sub == "" || strings.Contains(sub, "17056600574") {
		t.Fatalf("sub = %#v, want an opaque pseudonym", c["sub"])
	}
	subOf := func(form url.Values) string {
		t.Helper()
		tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), form)
		if err != nil {
			t.Fatalf("FetchToken: %v", err)
		}
		_, c := decode(t, tok)
		got, _ := c["sub"].(string)
		return got
	}
	if again := subOf(url.Values{"user": {"true"}, "pid": {"17056600574"}}); again != sub {
		t.Errorf("sub of the same person changed: %q, then %q", sub, again)
	}
	if other := subOf(url.Values{"user": {"true"}, "pid": {"13116900216"}}); other == sub || other == "" {
		t.Errorf("sub of another person = %q (first person's %q)", other, sub)
	}
	if other := subOf(url.Values{"user": {"true"}, "pid": {"17056600574"}, "client_id": {"another-client"}}); other == sub || other == "" {
		t.Errorf("sub at another client = %q, want a different pseudonym than %q", other, sub)
	}
}

func TestTokenEndpointUserDefaults(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key := newKey(t, "ES256")
	for _, tc := range []struct {
		name string
		form url.Values
		want map[string]string
	}{
		{"defaults", url.Values{"user": {"true"}}, map[string]string{
			helseidsim.ClaimPID: helseidsim.DefaultPID, helseidsim.ClaimSecurityLevel: "4", helseidsim.ClaimAssuranceLevel: "high"}},
		{"level 2", url.Values{"user": {"true"}, "security_level": {"2"}}, map[string]string{
			helseidsim.ClaimSecurityLevel: "2", helseidsim.ClaimAssuranceLevel: "low"}},
		{"asked for", url.Values{"user": {"true"}, "assurance_level": {"substantial"}, "sub": {"my-subject"}}, map[string]string{
			helseidsim.ClaimSecurityLevel: "4", helseidsim.ClaimAssuranceLevel: "substantial", "sub": "my-subject"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), tc.form)
			if err != nil {
				t.Fatalf("FetchToken: %v", err)
			}
			if _, err := verify(tok, fetchJWKS(t, s)); err != nil {
				t.Fatalf("verify: %v", err)
			}
			_, c := decode(t, tok)
			for k, v := range tc.want {
				if c[k] != v {
					t.Errorf("%s = %#v, want %q", k, c[k], v)
				}
			}
			if sub, _ := c["sub"].(string); sub == "" {
				t.Error("user token without sub")
			}
		})
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
	key := newKey(t, "ES256")
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
