package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// After a mix of allowed and denied requests, Caddy's metrics
// endpoint shows caddy_helseid_requests_total by outcome and reason with the
// exact deltas, and the other helsegate metrics move with them.
func TestMetricsByOutcomeAndReason(t *testing.T) {
	up := newUpstream(t)
	file := opsMembershipFile(t, orgParent)
	iss := sharedSim.Issuer()
	g := startGateway(t, 2, func(addrs []string) string {
		return fmt.Sprintf("http://%s {\n%s\treverse_proxy %s\n}\n\nhttp://%s {\n%s\treverse_proxy %s\n}\n",
			addrs[0], indent(helseid(iss)), up.URL(),
			addrs[1], indent(helseid(iss, "membership "+opsService+" {\n\tfile "+file+"\n}")), up.URL())
	})
	c := newCaller(t, sharedSim)
	before, _ := opsScrape(t, g)

	api, member := g.url(0, "/api/m"), g.url(1, "/api/m")
	for range 3 {
		expectOK(t, c.do(t, "GET", api))
	}
	for range 2 {
		expectProblem(t, send(t, "GET", api, nil), http.StatusUnauthorized, "unauthorized")
	}
	expired := c.token(t, helseidsim.TokenSpec{IssuedAt: time.Now().Add(-20 * time.Minute), Lifetime: 10 * time.Minute})
	expectProblem(t, send(t, "GET", api, dpopHeaders(expired, c.proof(t, "GET", api, expired, dpopclient.ProofOptions{}))),
		http.StatusUnauthorized, "invalid_token")
	tok := c.token(t, helseidsim.TokenSpec{})
	expectProblem(t, send(t, "GET", api, dpopHeaders(tok, c.proof(t, "GET", g.url(0, "/elsewhere"), tok, dpopclient.ProofOptions{}))),
		http.StatusUnauthorized, "invalid_dpop_proof")
	// One proof twice: allowed, then a replay.
	proof := c.proof(t, "GET", api, tok, dpopclient.ProofOptions{})
	expectOK(t, send(t, "GET", api, dpopHeaders(tok, proof)))
	expectProblem(t, send(t, "GET", api, dpopHeaders(tok, proof)), http.StatusUnauthorized, "invalid_dpop_proof")
	noScope := c.token(t, helseidsim.TokenSpec{Scopes: []string{"openid"}})
	expectProblem(t, send(t, "GET", api, dpopHeaders(noScope, c.proof(t, "GET", api, noScope, dpopclient.ProofOptions{}))),
		http.StatusForbidden, "insufficient_scope")
	expectProblem(t, send(t, "GET", api+"?access_token="+tok, dpopHeaders(tok, c.proof(t, "GET", api, tok, dpopclient.ProofOptions{}))),
		http.StatusBadRequest, "invalid_request")
	// Membership: the file authorizes orgParent only.
	for range 2 {
		expectOK(t, c.do(t, "GET", member))
	}
	stranger := c.token(t, helseidsim.TokenSpec{OrgParent: orgChild})
	expectProblem(t, send(t, "GET", member, dpopHeaders(stranger, c.proof(t, "GET", member, stranger, dpopclient.ProofOptions{}))),
		http.StatusForbidden, "not_member")

	after, body := opsScrape(t, g)
	delta := func(series string) float64 { return after[series] - before[series] }

	const requests = "caddy_helseid_requests_total"
	want := map[string]float64{
		opsSeries(requests, "outcome", "allow", "reason", "ok", "route", "default"):                    4,
		opsSeries(requests, "outcome", "allow", "reason", "member", "route", opsService):               2,
		opsSeries(requests, "outcome", "deny", "reason", "no_credentials", "route", "default"):         2,
		opsSeries(requests, "outcome", "deny", "reason", "token_expired", "route", "default"):          1,
		opsSeries(requests, "outcome", "deny", "reason", "proof_htu", "route", "default"):              1,
		opsSeries(requests, "outcome", "deny", "reason", "proof_replay", "route", "default"):           1,
		opsSeries(requests, "outcome", "deny", "reason", "scope_missing", "route", "default"):          1,
		opsSeries(requests, "outcome", "deny", "reason", "token_in_query", "route", "default"):         1,
		opsSeries(requests, "outcome", "deny", "reason", "not_member", "route", opsService):            1,
		opsSeries(requests, "outcome", "error", "reason", "jwks_unavailable", "route", "default"):      0,
		opsSeries(requests, "outcome", "error", "reason", "registry_unavailable", "route", opsService): 0,

		opsSeries("caddy_helseid_verification_duration_seconds_count", "outcome", "allow", "route", "default"):  4,
		opsSeries("caddy_helseid_verification_duration_seconds_count", "outcome", "allow", "route", opsService): 2,
		opsSeries("caddy_helseid_verification_duration_seconds_count", "outcome", "deny", "route", "default"):   7,
		opsSeries("caddy_helseid_verification_duration_seconds_count", "outcome", "deny", "route", opsService):  1,
		opsSeries("caddy_helseid_verification_duration_seconds_count", "outcome", "error", "route", "default"):  0,
		"caddy_helseid_replays_total": 1,
		// orgParent: local miss then the file; again: local hit. orgChild: local miss, the file.
		opsSeries("caddy_helseid_membership_cache_results_total", "result", "miss", "tier", "local"):   2,
		opsSeries("caddy_helseid_membership_cache_results_total", "result", "hit", "tier", "local"):    1,
		opsSeries("caddy_helseid_membership_cache_results_total", "result", "hit", "tier", "registry"): 2,
	}
	for series, w := range want {
		if _, ok := after[series]; !ok {
			t.Errorf("%s is not exposed", series)
			continue
		}
		if d := delta(series); d != w {
			t.Errorf("%s went up by %v, want %v", series, d, w)
		}
	}
	// No other decision series moved: the sum of the deltas is the number of requests.
	var total float64
	for series := range after {
		if strings.HasPrefix(series, requests+"{") {
			total += delta(series)
		}
	}
	if total != 14 {
		t.Errorf("%s went up by %v in all, want 14 (the requests sent)", requests, total)
	}
	// The issuer's keys were fetched once, for the first request (both sites share them).
	if d := delta(opsSeries("caddy_helseid_jwks_refreshes_total", "result", "ok")); d != 1 {
		t.Errorf("jwks_refreshes_total{result=ok} went up by %v, want 1", d)
	}
	opsLogSeriesOnFailure(t, "helsegate metrics", body)
}
