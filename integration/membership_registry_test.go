package integration

import (
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// While the registry fails, a last-known decision is served (by any
// replica sharing Redis); with none, 503 registry_unavailable. A registry
// refusing our credentials is a configuration error: 503, never masked.
func TestMembershipRegistryDown(t *testing.T) {
	_, prefix := needRedis(t)
	member, nonMember := newOrg(t), newOrg(t)
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(member)}})
	up := newUpstream(t)
	site := simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("registry "+reg.URL(), "cache_ttl 1s", "negative_ttl 1s", "stale_for 3s"),
		redisBlock(redisAddr(), prefix))
	a := startGateway(t, 1, site)
	b := startGateway(t, 1, site) // never asked before the registry fails
	c := newCaller(t, sharedSim)
	urlA, urlB := a.url(0, "/api/m"), b.url(0, "/api/m")

	// expectStale checks the audit entry's account of the answer decided on.
	expectStale := func(t *testing.T, g *gateway, stale bool) {
		t.Helper()
		e := g.lastAudit()
		if e == nil {
			t.Fatal("no audit entry")
		}
		if _, ok := e["membership_age_s"].(float64); !ok || (e["membership_stale"] == true) != stale ||
			(!stale && e["membership_stale"] != nil) {
			t.Errorf("audit membership_age_s %v membership_stale %v; want an age, stale %v", e["membership_age_s"], e["membership_stale"], stale)
		}
	}

	warmed := time.Now()
	r, _ := c.asOrg(t, urlA, member)
	expectMemberOK(t, up, r)
	expectStale(t, a, false)
	r, tok := c.asOrg(t, urlA, nonMember)
	expectNotMember(t, a, r, tok, nonMember, "not_member")
	time.Sleep(1100 * time.Millisecond) // past cache_ttl and negative_ttl: the next lookups ask the registry

	t.Run("registry answers 403", func(t *testing.T) {
		reg.SetFailure(registrysim.Status(http.StatusForbidden))
		defer reg.SetFailure(registrysim.None())
		unknown := newOrg(t)
		r, tok := c.asOrg(t, urlA, unknown)
		expectUnavailable(t, a, r, tok, unknown, "registry_misconfigured")
		// Not a registry failure: the last-known answer does not hide it.
		r, tok = c.asOrg(t, urlA, member)
		expectUnavailable(t, a, r, tok, member, "registry_misconfigured")
	})

	// Each failure once, before the breaker opens (5 failures: these six
	// lookups open it on the fifth). The member's lookups are served stale at
	// once and refreshed in the background, so the registry keeps failing
	// from one subtest to the next: a refresh that succeeded in between
	// would make the next subtest's answer fresh.
	for _, f := range []registrysim.Failure{registrysim.Status(503), registrysim.Status(429), registrysim.Down()} {
		t.Run(f.String(), func(t *testing.T) {
			reg.SetFailure(f)

			unknown := newOrg(t)
			before := reg.Calls()
			r, tok := c.asOrg(t, urlA, unknown)
			expectUnavailable(t, a, r, tok, unknown, "registry_unavailable")
			if reg.Calls() == before {
				t.Errorf("the registry was not asked about the unknown org: the 503 is not this failure's")
			}

			up.reset()
			r, _ = c.asOrg(t, urlA, member)
			expectMemberOK(t, up, r)
			a.expectReason(t, "allow", "member")
			expectStale(t, a, true)
		})
	}

	t.Run("another replica serves the last-known answers from Redis", func(t *testing.T) {
		reg.SetFailure(registrysim.Down())
		defer reg.SetFailure(registrysim.None())
		up.reset()
		r, _ := c.asOrg(t, urlB, member)
		expectMemberOK(t, up, r)
		expectStale(t, b, true)
		r, tok := c.asOrg(t, urlB, nonMember)
		expectNotMember(t, b, r, tok, nonMember, "not_member")
		expectStale(t, b, true)
		unknown := newOrg(t)
		r, tok = c.asOrg(t, urlB, unknown)
		expectUnavailable(t, b, r, tok, unknown, "registry_unavailable")
		if time.Since(warmed) > 2500*time.Millisecond {
			t.Fatalf("test too slow: %s since the warm-up, stale_for is 3s", time.Since(warmed))
		}
	})

	t.Run("past stale_for", func(t *testing.T) {
		reg.SetFailure(registrysim.Down())
		defer reg.SetFailure(registrysim.None())
		time.Sleep(time.Until(warmed.Add(3100 * time.Millisecond)))
		for _, g := range []*gateway{a, b} {
			r, tok := c.asOrg(t, g.url(0, "/api/m"), member)
			expectUnavailable(t, g, r, tok, member, "registry_unavailable")
		}
	})
}

// A circuit breaker around the registry, so that a dead registry
// costs microseconds, not a timeout per request.
func TestMembershipBreaker(t *testing.T) {
	_, prefix := needRedis(t)
	reg := startRegistry(t, registrysim.Options{})
	up := newUpstream(t)
	const timeout = 200 * time.Millisecond
	g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("registry "+reg.URL(), "timeout 200ms"),
		redisBlock(redisAddr(), prefix)))
	c := newCaller(t, sharedSim)
	url := g.url(0, "/api/b")

	t.Run("one registry call per org at a time", func(t *testing.T) {
		// A gateway of its own with a long registry timeout: the registry
		// holds the one lookup until every request has missed the
		// in-process tier, so the test depends on no timing.
		hold := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
			membershipBlock("registry "+reg.URL(), "timeout 30s"),
			redisBlock(redisAddr(), prefix)))
		url := hold.url(0, "/api/b")
		org := newOrg(t)
		reg.Set(active(org))
		calls := reg.Calls()
		reg.SetFailure(registrysim.Hang())
		defer reg.SetFailure(registrysim.None())
		const n = 10
		headers := make([]map[string][]string, n)
		for i := range headers {
			tok := c.token(t, helseidsim.TokenSpec{OrgParent: org})
			headers[i] = dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))
		}
		localMiss := opsSeries("caddy_helseid_membership_cache_results_total", "result", "miss", "tier", "local")
		before, _ := opsScrape(t, hold)
		statuses := make([]int, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				req, _ := http.NewRequest("GET", url, nil)
				for k, v := range headers[i] {
					req.Header[k] = v
				}
				resp, err := httpClient.Do(req)
				if err != nil {
					errs[i] = err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			})
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			now, _ := opsScrape(t, hold)
			if now[localMiss]-before[localMiss] >= n && reg.Held() >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the %d requests did not all reach the membership lookup: %v more local misses, %d lookups held",
					n, now[localMiss]-before[localMiss], reg.Held())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if held := reg.Held(); held != 1 {
			t.Errorf("%d concurrent requests for one uncached org hold %d registry lookups, want 1", n, held)
		}
		reg.SetFailure(registrysim.None())
		wg.Wait()
		for i := range n {
			if errs[i] != nil || statuses[i] != http.StatusOK {
				t.Errorf("concurrent request %d: %d %v", i, statuses[i], errs[i])
			}
		}
		if got := reg.Calls() - calls; got != 1 {
			t.Errorf("%d concurrent requests for one uncached org made %d registry calls, want 1", n, got)
		}
	})
	base := reg.Calls()
	reg.SetFailure(registrysim.Slow(2 * time.Second))

	for i := range 5 {
		org := newOrg(t)
		start := time.Now()
		r, tok := c.asOrg(t, url, org)
		expectUnavailable(t, g, r, tok, org, "registry_unavailable")
		if d := time.Since(start); d < timeout || d > 1900*time.Millisecond {
			t.Errorf("failing request %d took %s: want the registry timeout (%s), not the registry's 2 s", i, d, timeout)
		}
	}
	if n := reg.Calls() - base; n != 5 {
		t.Fatalf("the registry was asked %d times for 5 uncached orgs, want 5", n)
	}
	if g.findLog(func(e map[string]any) bool {
		return e["msg"] == "circuit breaker changed state" && e["dependency"] == "registry" && e["to"] == "open"
	}) == nil {
		t.Errorf("no log says the registry breaker opened")
	}

	// Open: uncached orgs are answered at once, without asking the registry.
	fastest := time.Hour
	for range 5 {
		org := newOrg(t)
		start := time.Now()
		r, tok := c.asOrg(t, url, org)
		fastest = min(fastest, time.Since(start))
		expectUnavailable(t, g, r, tok, org, "registry_unavailable")
	}
	if n := reg.Calls() - base; n != 5 {
		t.Errorf("the registry was asked %d more times while the breaker was open", n-5)
	}
	if fastest >= timeout {
		t.Errorf("the fastest request with the breaker open took %s, not less than the registry timeout %s", fastest, timeout)
	}
	t.Logf("fastest request with the breaker open: %s", fastest)
}

// While the registry hangs after a failure, a cached member whose answer has
// expired (inside stale_for) is answered 200 at once: the response arrives
// while the registry simulator still holds the one background refresh, which,
// once the registry answers, makes the answer fresh again.
func TestMembershipRegistryHangsServesStaleAtOnce(t *testing.T) {
	member := newOrg(t)
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(member)}})
	up := newUpstream(t)
	g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
		// A registry timeout far beyond the test: the held refresh stays
		// held until the test lets it go.
		membershipBlock("registry "+reg.URL(), "cache_ttl 1s", "negative_ttl 1s", "stale_for 1h", "timeout 30s")))
	c := newCaller(t, sharedSim)
	url := g.url(0, "/api/h")
	stale := func() bool { e := g.lastAudit(); return e != nil && e["membership_stale"] == true }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15 s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	warmed := time.Now()
	r, _ := c.asOrg(t, url, member)
	expectMemberOK(t, up, r)
	time.Sleep(time.Until(warmed.Add(1100 * time.Millisecond))) // past cache_ttl

	// The registry fails: this request waits for it (it worked until now),
	// and is served the last-known answer.
	reg.SetFailure(registrysim.Status(http.StatusServiceUnavailable))
	r, _ = c.asOrg(t, url, member)
	expectMemberOK(t, up, r)
	if !stale() {
		t.Fatalf("with the registry failing the answer is not marked stale: %v", g.lastAudit())
	}

	// Now it hangs. Each request is answered while the simulator holds the
	// one refresh, which only the test can let go.
	reg.SetFailure(registrysim.Hang())
	before := reg.Calls()
	for i := range 3 {
		r, _ := c.asOrg(t, url, member)
		expectMemberOK(t, up, r)
		if !stale() {
			t.Fatalf("request %d: the answer is not marked stale: %v", i, g.lastAudit())
		}
		waitFor("the background refresh reaching the registry", func() bool { return reg.Held() == 1 })
		if n := reg.Calls() - before; n != 1 {
			t.Fatalf("after %d requests while the registry hangs: %d registry calls, want 1", i+1, n)
		}
	}

	// The registry answers the held refresh: the member's answer is fresh again.
	reg.SetFailure(registrysim.None())
	released := time.Now()
	waitFor("the held refresh answered", func() bool { return reg.Held() == 0 })
	waitFor("a fresh answer after the refresh", func() bool {
		r, _ := c.asOrg(t, url, member)
		expectMemberOK(t, up, r)
		return !stale()
	})
	// The refreshed answer is fresh for cache_ttl (1 s): within it, no
	// request asked the registry again.
	if n := reg.Calls() - before; n != 1 && time.Since(released) < 900*time.Millisecond {
		t.Errorf("%d registry calls since the registry hung, want the one refresh", n)
	}
}
