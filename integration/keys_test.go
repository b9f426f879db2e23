package integration

import (
	"net/http"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// privateSim starts a simulator for one test (for tests that rotate its keys
// or take it down).
func privateSim(t *testing.T) *helseidsim.Server {
	t.Helper()
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// JWKS: a new signing key is picked up without a restart; unknown
// kids refresh the key set at most once per 30 s.
func TestSigningKeyRotation(t *testing.T) {
	sim := privateSim(t)
	up := newUpstream(t)
	site := simpleSite(sim.Issuer(), up.URL())
	c := newCaller(t, sim)

	t.Run("new kid accepted without restart", func(t *testing.T) {
		g := startGateway(t, 1, site)
		url := g.url(0, "/api/rot")
		expectOK(t, c.do(t, "GET", url))
		oldKid := sim.CurrentKid()
		oldTok := c.token(t, helseidsim.TokenSpec{})

		newKid, err := sim.Rotate()
		if err != nil {
			t.Fatal(err)
		}
		if newKid == oldKid {
			t.Fatal("Rotate kept the kid")
		}
		expectOK(t, c.do(t, "GET", url))
		g.expectReason(t, "allow", "ok")
		// A token signed with the earlier, still published key still works.
		expectOK(t, send(t, "GET", url, dpopHeaders(oldTok, c.proof(t, "GET", url, oldTok, dpopclient.ProofOptions{}))))
	})

	t.Run("unknown kids cost at most one JWKS fetch", func(t *testing.T) {
		g := startGateway(t, 1, site)
		url := g.url(0, "/api/kid")
		expectOK(t, c.do(t, "GET", url))
		before := sim.JWKSFetches()
		start := time.Now()
		for range 10 {
			tok := c.token(t, helseidsim.TokenSpec{Kid: randomKid()})
			r := send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{})))
			expectProblem(t, r, http.StatusUnauthorized, "invalid_token", tok, orgParent)
			expectErrorChallenge(t, r, "invalid_token")
			g.expectReason(t, "deny", "token_kid")
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("10 requests took %s, longer than the 30 s refresh interval: the fetch count says nothing", d)
		}
		delta := sim.JWKSFetches() - before
		t.Logf("JWKS fetches caused by 10 unknown kids: %d", delta)
		if delta > 1 {
			t.Errorf("10 tokens with unknown kids caused %d JWKS fetches, want at most 1", delta)
		}
		// The known key still works after the storm.
		expectOK(t, c.do(t, "GET", url))
	})
}

// JWKS: during an issuer outage the last good key set keeps serving.
func TestIssuerOutage(t *testing.T) {
	sim := privateSim(t)
	up := newUpstream(t)
	g := startGateway(t, 1, simpleSite(sim.Issuer(), up.URL()))
	c := newCaller(t, sim)
	url := g.url(0, "/api/outage")

	expectOK(t, c.do(t, "GET", url))
	sim.SetOutage(true)
	t.Cleanup(func() { sim.SetOutage(false) })

	// New tokens (never seen, so not in the verified-token cache) signed with
	// the known key.
	for i := range 3 {
		tok := c.token(t, helseidsim.TokenSpec{OrgChild: orgChild, Extra: map[string]any{"n": i}})
		expectOK(t, send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))))
	}
	// A token with an unknown kid is still simply an invalid token.
	tok := c.token(t, helseidsim.TokenSpec{Kid: randomKid()})
	r := send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{})))
	expectProblem(t, r, http.StatusUnauthorized, "invalid_token", tok, orgParent)
	// And the known key keeps serving after that failed refresh.
	expectOK(t, c.do(t, "GET", url))
}
