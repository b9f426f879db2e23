package helseidsim_test

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

var kidRE = regexp.MustCompile(`^[0-9A-F]{40}$`)

func start(t *testing.T, opts helseidsim.Options) *helseidsim.Server {
	t.Helper()
	s, err := helseidsim.Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// newKey is a fresh DPoP key for alg.
func newKey(t *testing.T, alg string) *dpopclient.Key {
	t.Helper()
	key, err := dpopclient.NewKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func mint(t *testing.T, s *helseidsim.Server, spec helseidsim.TokenSpec) string {
	t.Helper()
	tok, err := s.Mint(spec)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return tok
}

// fetchJWKS gets the JWKS over HTTP with jwx.
func fetchJWKS(t *testing.T, s *helseidsim.Server) jwk.Set {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set, err := jwk.Fetch(ctx, s.JWKSURI())
	if err != nil {
		t.Fatalf("jwk.Fetch: %v", err)
	}
	return set
}

// verify checks tok against set with jwx (signature and exp/nbf).
func verify(tok string, set jwk.Set) (jwt.Token, error) {
	return jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithValidate(true))
}

// decode returns the protected header and the raw claims of tok, without
// verifying it.
func decode(t *testing.T, tok string) (jws.Headers, map[string]any) {
	t.Helper()
	msg, err := jws.Parse([]byte(tok))
	if err != nil {
		t.Fatalf("jws.Parse: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(msg.Payload(), &claims); err != nil {
		t.Fatalf("payload: %v", err)
	}
	return msg.Signatures()[0].ProtectedHeaders(), claims
}

func get(t *testing.T, url string) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp, body
}

// postToken posts form to the token endpoint with the given DPoP headers.
func postToken(t *testing.T, s *helseidsim.Server, proofs []string, form string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.TokenEndpoint(), strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, p := range proofs {
		req.Header.Add("DPoP", p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}
