package integration

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// service is the membership service of every test.
const service = "kjernejournal"

// ---------------------------------------------------------------------------
// Helpers

// newOrg returns a random valid organization number (mod-11 check digit).
func newOrg(t *testing.T) string {
	t.Helper()
	weights := [8]int{3, 2, 7, 6, 5, 4, 3, 2}
	for {
		n, err := rand.Int(rand.Reader, big.NewInt(90_000_000))
		if err != nil {
			t.Fatal(err)
		}
		digits := strconv.FormatInt(80_000_000+n.Int64(), 10)[:8] // 8xxxxxxx or 9xxxxxxx, as Enhetsregisteret
		sum := 0
		for i := range 8 {
			sum += int(digits[i]-'0') * weights[i]
		}
		check := 11 - sum%11
		if check == 11 {
			check = 0
		}
		if check == 10 {
			continue
		}
		org := digits + strconv.Itoa(check)
		if !authz.ValidOrgNumber(org) {
			t.Fatalf("test bug: generated %s is not valid", org)
		}
		return org
	}
}

// active is an active, open-ended authorization of org for the service.
func active(org string) authz.Authorization {
	from := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second)
	return authz.Authorization{Organization: org, Service: service, Member: true, Status: "active", ValidFrom: &from}
}

// startRegistry starts a registry simulator for the test.
func startRegistry(t *testing.T, opts registrysim.Options) *registrysim.Server {
	t.Helper()
	reg, err := registrysim.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

// membershipBlock renders `membership kjernejournal { lines }`.
func membershipBlock(lines ...string) string {
	return "membership " + service + " {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

// redisBlock renders a redis subdirective for addr with key prefix.
func redisBlock(addr, prefix string) string {
	return fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", addr, prefix)
}

// doSpec sends method url with a fresh token minted from spec and a correct
// proof, and returns the reply and the token.
func (c *caller) doSpec(t *testing.T, method, url string, spec helseidsim.TokenSpec) (reply, string) {
	t.Helper()
	tok := c.token(t, spec)
	return send(t, method, url, dpopHeaders(tok, c.proof(t, method, htuOf(url), tok, dpopclient.ProofOptions{}))), tok
}

// asOrg sends GET url as a caller whose orgnr_parent is org.
func (c *caller) asOrg(t *testing.T, url, org string) (reply, string) {
	t.Helper()
	return c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: org})
}

// expectNotMember checks the 403 not_member answer for an unauthorized organization: no
// challenge, error not_member, and the audit reason.
func expectNotMember(t *testing.T, g *gateway, r reply, tok, org, reason string) {
	t.Helper()
	expectProblem(t, r, http.StatusForbidden, "not_member", tok, org)
	expectChallenge(t, r)
	g.expectReason(t, "deny", reason)
	if e := g.lastAudit(); e != nil && e["service"] != service {
		t.Errorf("audit entry names service %v, want %q", e["service"], service)
	}
}

// expectUnavailable checks the 503 registry_unavailable answer for an unknown membership with the
// registry unreachable.
func expectUnavailable(t *testing.T, g *gateway, r reply, tok, org, reason string) {
	t.Helper()
	expectProblem(t, r, http.StatusServiceUnavailable, "registry_unavailable", tok, org)
	expectChallenge(t, r)
	if r.header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %s", r)
	}
	g.expectReason(t, "deny", reason)
}

// expectMemberOK checks a 200 from the upstream carrying X-Helseid-Membership.
func expectMemberOK(t *testing.T, up *upstream, r reply) {
	t.Helper()
	expectOK(t, r)
	if _, _, _, h := up.last(); h.Get("X-Helseid-Membership") != service {
		t.Errorf("upstream X-Helseid-Membership = %q, want %q", h.Get("X-Helseid-Membership"), service)
	}
}

// findLog returns the first log entry for which match is true, or nil.
func (g *gateway) findLog(match func(e map[string]any) bool) map[string]any {
	for _, e := range g.logEntries() {
		if match(e) {
			return e
		}
	}
	return nil
}

// msgContains matches log entries at level whose msg contains s.
func msgContains(level, s string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		msg, _ := e["msg"].(string)
		return e["level"] == level && strings.Contains(msg, s)
	}
}

// invalidate POSTs body to the gateway's admin invalidation endpoint.
func (g *gateway) invalidate(t *testing.T, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+g.admin+"/helseid/membership/invalidate", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("POST invalidate: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST invalidate %s: %s: %s", body, resp.Status, b)
	}
	var got struct{ Caches, Published int }
	if err := json.Unmarshal(b, &got); err != nil || got.Published < 1 {
		t.Errorf("POST invalidate %s answered %s: want at least one replica counted as a receiver", body, b)
	}
}

// pollStatus sends requests as org until one answers want or the deadline
// passes, and returns the last reply and how long it took.
func pollStatus(t *testing.T, c *caller, url, org string, want int, within time.Duration) (reply, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		r, _ := c.asOrg(t, url, org)
		if r.status == want || time.Since(start) > within {
			return r, time.Since(start)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// A TCP proxy in front of Redis that the test can kill

type tcpProxy struct {
	addr   string
	target string

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startProxy forwards a loopback port to target until Close.
func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{addr: ln.Addr().String(), target: target}
	p.serveOn(ln)
	t.Cleanup(p.Close)
	return p
}

func (p *tcpProxy) Addr() string { return p.addr }

func (p *tcpProxy) serveOn(ln net.Listener) {
	p.mu.Lock()
	p.ln, p.conns, p.closed = ln, map[net.Conn]struct{}{}, false
	p.mu.Unlock()
	p.wg.Add(1)
	go p.serve(ln)
}

// Restart listens again on the same address, as a Redis that comes back.
func (p *tcpProxy) Restart(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("restarting the Redis proxy on %s: %v", p.addr, err)
	}
	p.serveOn(ln)
}

func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) serve(ln net.Listener) {
	defer p.wg.Done()
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(in) || !p.track(out) {
			_ = in.Close()
			_ = out.Close()
			return
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// Close stops listening and kills every connection, as a Redis that dies.
func (p *tcpProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// ---------------------------------------------------------------------------
// Tests

// The decisions of the membership check: statuses, headers upstream, audit.
func TestMembershipDecisions(t *testing.T) {
	_, prefix := needRedis(t)
	const regToken = "registry-token-0123456789"
	member, child, other := newOrg(t), newOrg(t), newOrg(t)
	suspended, expired, notMember, unknown, early := newOrg(t), newOrg(t), newOrg(t), newOrg(t), newOrg(t)
	past := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	future := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)
	reg := startRegistry(t, registrysim.Options{Token: regToken, Members: []authz.Authorization{
		active(member),
		active(child),
		active(other),
		{Organization: suspended, Service: service, Member: true, Status: "suspended"},
		{Organization: expired, Service: service, Member: true, Status: "active", ValidTo: &past},
		{Organization: notMember, Service: service, Member: false, Status: "active"},
		{Organization: early, Service: service, Member: true, Status: "active", ValidFrom: &future},
	}})
	up := newUpstream(t)
	iss := sharedSim.Issuer()
	rb := redisBlock(redisAddr(), prefix)
	route := func(path string, lines ...string) string {
		h := helseid(iss, membershipBlock(append([]string{"registry " + reg.URL()}, lines...)...), rb)
		return fmt.Sprintf("handle %s {\n%s\treverse_proxy %s\n}\n", path, indent(h), up.URL())
	}
	g := startGateway(t, 1, func(addrs []string) string {
		return fmt.Sprintf("http://%s {\n%s}\n", addrs[0], indent(
			route("/p/*", "registry_token "+regToken)+
				route("/c/*", "registry_token "+regToken, "org child")+
				route("/both/*", "registry_token "+regToken, "org both")+
				route("/wrong/*", "registry_token not-the-"+regToken)))
	})
	c := newCaller(t, sharedSim)
	parent := g.url(0, "/p/x")

	t.Run("member passes", func(t *testing.T) {
		up.reset()
		r, _ := c.asOrg(t, parent, member)
		expectMemberOK(t, up, r)
		g.expectReason(t, "allow", "member")
		if _, _, _, h := up.last(); h.Get("X-Helseid-Org-Parent") != member {
			t.Errorf("upstream X-Helseid-Org-Parent = %q, want %s", h.Get("X-Helseid-Org-Parent"), member)
		}
	})

	denials := []struct{ name, org, reason string }{
		{"unknown organization (404)", unknown, "not_member"},
		{"member false", notMember, "not_member"},
		{"suspended", suspended, "suspended"},
		{"expired", expired, "outside_validity"},
		{"not yet valid", early, "outside_validity"},
	}
	for _, d := range denials {
		t.Run(d.name, func(t *testing.T) {
			up.reset()
			r, tok := c.asOrg(t, parent, d.org)
			expectNotMember(t, g, r, tok, d.org, d.reason)
			if hits, _, _, _ := up.last(); hits != 0 {
				t.Errorf("a denied request reached the upstream")
			}
		})
	}

	t.Run("invalid org number never reaches the registry", func(t *testing.T) {
		bad := member[:8] + strconv.Itoa((int(member[8]-'0')+1)%10)
		if authz.ValidOrgNumber(bad) {
			t.Fatalf("test bug: %s is valid", bad)
		}
		before := reg.Calls()
		r, tok := c.asOrg(t, parent, bad)
		expectNotMember(t, g, r, tok, bad, "org_invalid")
		if n := reg.Calls() - before; n != 0 {
			t.Errorf("the registry was asked %d times about an invalid org number", n)
		}
	})

	t.Run("org child", func(t *testing.T) {
		url := g.url(0, "/c/x")
		up.reset()
		// The parent is not a member; the child is: org child asks about the child only.
		r, _ := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: unknown, OrgChild: child})
		expectMemberOK(t, up, r)

		r, tok := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member})
		expectNotMember(t, g, r, tok, member, "org_missing")

		r, tok = c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member, OrgChild: suspended})
		expectNotMember(t, g, r, tok, suspended, "suspended")
	})

	t.Run("org both", func(t *testing.T) {
		url := g.url(0, "/both/x")
		up.reset()
		r, _ := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member, OrgChild: child})
		expectMemberOK(t, up, r)
		r, tok := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member, OrgChild: expired})
		expectNotMember(t, g, r, tok, expired, "outside_validity")
		r, tok = c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: unknown, OrgChild: child})
		expectNotMember(t, g, r, tok, unknown, "not_member")
		r, tok = c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member})
		expectNotMember(t, g, r, tok, member, "org_missing")
	})

	t.Run("registry refuses the registry_token", func(t *testing.T) {
		up.reset()
		before := reg.Calls()
		// An org no other route asked about: the Redis tier is shared by
		// every route of the service.
		r, tok := c.asOrg(t, g.url(0, "/wrong/x"), other)
		expectUnavailable(t, g, r, tok, other, "registry_misconfigured")
		if reg.Calls() == before {
			t.Errorf("the registry was not asked")
		}
		if hits, _, _, _ := up.last(); hits != 0 {
			t.Errorf("a denied request reached the upstream")
		}
		// A configuration error is not a registry failure: it neither opens
		// the breaker nor is cached.
		for range 6 {
			before := reg.Calls()
			r, tok := c.asOrg(t, g.url(0, "/wrong/x"), other)
			expectUnavailable(t, g, r, tok, other, "registry_misconfigured")
			if reg.Calls() == before {
				t.Fatalf("the registry was not asked: a 401 must not open the breaker nor be cached")
			}
		}
		if g.findLog(msgContains("error", "refused the gateway's credentials")) == nil {
			t.Errorf("no error-level log says the registry refused the gateway's credentials")
		}
		for _, e := range g.logEntries() {
			line, _ := json.Marshal(e)
			if strings.Contains(string(line), regToken) {
				t.Errorf("the registry token is logged: %s", line)
			}
		}
	})
}

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

// With Redis dead mid-run, membership still works from the
// in-process tier and the registry.
func TestMembershipRedisDown(t *testing.T) {
	rc, prefix := needRedis(t)
	proxy := startProxy(t, redisAddr())
	cached, fresh, fresh2 := newOrg(t), newOrg(t), newOrg(t)
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(cached), active(fresh), active(fresh2)}})
	up := newUpstream(t)
	g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("registry "+reg.URL()),
		redisBlock(proxy.Addr(), prefix), "dpop_future_skew 1s"))
	c := newCaller(t, sharedSim)
	url := g.url(0, "/api/r")

	r, _ := c.asOrg(t, url, cached)
	expectMemberOK(t, up, r)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if keys, err := redisKeys(ctx, rc, prefix+"v1:membership:*"+cached); err != nil || len(keys) != 1 {
		t.Errorf("want one membership key for the org in Redis, found %q (%v)", keys, err)
	}

	proxy.Close()
	// The replay store refuses proofs issued before Redis began failing
	// (plus the skew), then the in-process tier answers. The cached org's
	// answer comes from the in-process membership tier: no registry call.
	waitAccepted(t, g, func() reply { r, _ := c.asOrg(t, url, cached); return r })

	for i, org := range []string{cached, fresh, cached, fresh2} {
		start := time.Now()
		r, _ := c.asOrg(t, url, org)
		expectMemberOK(t, up, r)
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("request %d took %s with Redis down", i, d)
		}
	}
	if n := reg.Calls(); n != 3 {
		t.Errorf("registry calls = %d, want 3 (cached once, then each new org once)", n)
	}

	t.Run("invalidation still evicts locally", func(t *testing.T) {
		reg.Set(authz.Authorization{Organization: cached, Service: service, Member: false, Status: "active"})
		req, _ := http.NewRequest(http.MethodPost, "http://"+g.admin+"/helseid/membership/invalidate",
			strings.NewReader(fmt.Sprintf(`{"service":%q,"organization":%q}`, service, cached)))
		resp, err := adminClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Redis cannot carry it to the other replicas: the operator must hear so.
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("invalidation with Redis down answered %s %s, want 502", resp.Status, body)
		}
		var got struct {
			Error  string
			Failed []struct{ Step string }
		}
		if err := json.Unmarshal(body, &got); err != nil || got.Error == "" ||
			!slices.ContainsFunc(got.Failed, func(f struct{ Step string }) bool { return f.Step == "publish" }) {
			t.Errorf("invalidation with Redis down answered %s: want an error naming the failed publish step", body)
		}
		r, tok := c.asOrg(t, url, cached)
		expectNotMember(t, g, r, tok, cached, "not_member")
	})

	t.Run("Redis back: invalidations reach the gateway again", func(t *testing.T) {
		proxy.Restart(t)
		r, _ := c.asOrg(t, url, fresh) // in the in-process tier since before Redis died
		expectMemberOK(t, up, r)
		reg.Remove(fresh, service)
		// The subscriber reconnects with backoff; publish until the gateway
		// hears (or, resubscribed, clears its in-process tier).
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		start := time.Now()
		for {
			if _, err := cache.Publish(ctx, rc, prefix, service, fresh); err != nil {
				t.Fatalf("publishing through the real Redis: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
			r, tok := c.asOrg(t, url, fresh)
			if r.status == http.StatusForbidden {
				expectNotMember(t, g, r, tok, fresh, "not_member")
				t.Logf("invalidations reached the gateway %s after Redis came back", time.Since(start))
				return
			}
			expectMemberOK(t, up, r)
			if ctx.Err() != nil {
				t.Fatalf("15 s after Redis came back the gateway still serves an invalidated member: " +
					"the invalidation subscriber did not recover")
			}
		}
	})
}

// Replicas share the Redis tier, and an invalidation published
// by one's admin endpoint reaches every replica within a second.
func TestMembershipSharedAndInvalidation(t *testing.T) {
	_, prefix := needRedis(t)
	x, y := newOrg(t), newOrg(t)
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(x), active(y)}})
	up := newUpstream(t)
	site := simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("registry "+reg.URL()),
		redisBlock(redisAddr(), prefix))
	a := startGateway(t, 1, site)
	b := startGateway(t, 1, site)
	c := newCaller(t, sharedSim)
	urlA, urlB := a.url(0, "/api/s"), b.url(0, "/api/s")

	t.Run("B answers from the entry A stored", func(t *testing.T) {
		r, _ := c.asOrg(t, urlA, x)
		expectMemberOK(t, up, r)
		if n := reg.Calls(); n != 1 {
			t.Fatalf("registry calls after A's request = %d, want 1", n)
		}
		r, _ = c.asOrg(t, urlB, x)
		expectMemberOK(t, up, r)
		if n := reg.Calls(); n != 1 {
			t.Errorf("B asked the registry (%d calls): it should have used the Redis entry A stored", n)
		}
	})

	flip := func(t *testing.T, org, body string) {
		t.Helper()
		// Both replicas hold org in their in-process tier.
		for _, u := range []string{urlA, urlB} {
			r, _ := c.asOrg(t, u, org)
			expectMemberOK(t, up, r)
		}
		reg.Set(authz.Authorization{Organization: org, Service: service, Member: false, Status: "active"})
		// Cached: the change does not show by itself.
		r, _ := c.asOrg(t, urlB, org)
		expectMemberOK(t, up, r)

		a.invalidate(t, body)
		r, took := pollStatus(t, c, urlB, org, http.StatusForbidden, time.Second)
		if r.status != http.StatusForbidden {
			t.Fatalf("gateway B still answers %d %s one second after the invalidation on A", r.status, r.body)
		}
		t.Logf("gateway B flipped to 403 %s after the invalidation", took)
		expectNotMember(t, b, r, "", org, "not_member")
		r, tok := c.asOrg(t, urlA, org)
		expectNotMember(t, a, r, tok, org, "not_member")
	}
	t.Run("one organization", func(t *testing.T) {
		flip(t, x, fmt.Sprintf(`{"service":%q,"organization":%q}`, service, x))
	})
	t.Run("all", func(t *testing.T) {
		flip(t, y, `{"all":true}`)
	})
}

// The file source is reloaded when the file changes, and a bad file
// keeps the last good one. With the default cache_ttl a change shows at the
// next poll: a reload evicts the in-process tier, and a file source has no
// Redis tier in front of it (a file is per-replica configuration), even with
// redis configured.
func TestMembershipFile(t *testing.T) {
	rc, prefix := needRedis(t)
	x, y, z := newOrg(t), newOrg(t), newOrg(t)
	path := filepath.Join(t.TempDir(), "members.json")
	writeMembers := func(body string) {
		t.Helper()
		// Atomic replace with a later mtime, as a deploy would.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		next := time.Now().Add(time.Second)
		if fi, err := os.Stat(path); err == nil && !fi.ModTime().Before(next) {
			next = fi.ModTime().Add(time.Second)
		}
		if err := os.Chtimes(tmp, next, next); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	doc := func(orgs ...string) string {
		var d registrysim.Document
		for _, o := range orgs {
			d.Authorizations = append(d.Authorizations, active(o))
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	writeMembers(doc(x, y))
	up := newUpstream(t)
	g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("file "+path), // default cache_ttl 5m, negative_ttl 1m
		redisBlock(redisAddr(), prefix)))
	c := newCaller(t, sharedSim)
	url := g.url(0, "/api/f")

	for _, org := range []string{x, y} {
		r, _ := c.asOrg(t, url, org)
		expectMemberOK(t, up, r)
	}
	r, tok := c.asOrg(t, url, newOrg(t))
	expectNotMember(t, g, r, tok, "", "not_member")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if keys, err := redisKeys(ctx, rc, prefix+"v1:membership:*"); err != nil || len(keys) != 0 {
		t.Errorf("the file source's answers reached Redis: %q (%v)", keys, err)
	}

	t.Run("member removed", func(t *testing.T) {
		// y is cached in-process, fresh for cache_ttl: only the reload's
		// eviction can make the change show.
		writeMembers(doc(x, z))
		r, took := pollStatus(t, c, url, y, http.StatusForbidden, 5*time.Second)
		if r.status != http.StatusForbidden {
			t.Fatalf("the removed member still gets %d %s 5 s after the file changed", r.status, r.body)
		}
		t.Logf("the removal showed after %s", took)
		expectNotMember(t, g, r, "", y, "not_member")
		r, _ = c.asOrg(t, url, x)
		expectMemberOK(t, up, r)
	})

	t.Run("broken file keeps the last good one", func(t *testing.T) {
		writeMembers(`{"authorizations":[`)
		deadline := time.Now().Add(5 * time.Second)
		for g.findLog(msgContains("error", "membership file rejected")) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("no error log rejecting the broken membership file 5 s after it was written")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// z was never asked about: the answer comes from the last good set,
		// not from a cache.
		r, _ := c.asOrg(t, url, z)
		expectMemberOK(t, up, r)
		r, _ = c.asOrg(t, url, x)
		expectMemberOK(t, up, r)
		r, tok := c.asOrg(t, url, y)
		expectNotMember(t, g, r, tok, y, "not_member")
	})
}

// Validate refuses a membership file with an invalid org number
// and a membership block without a source, naming the file and line.
func TestMembershipValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, membership string) (path, content string) {
		content = fmt.Sprintf(`{
	admin off
	auto_https off
}

http://127.0.0.1:8080 {
	helseid {
		issuer https://helseid-sts.invalid
		audience nhn:kjernejournal
		scopes nhn:kjernejournal/api
%s
	}
	reverse_proxy 127.0.0.1:9
}
`, membership)
		path = filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path, content
	}
	mustFail := func(t *testing.T, path, content string) string {
		t.Helper()
		out, err := validate(t, path)
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("validate succeeded (or did not run: %v) on a bad config:\n%s\n--- output ---\n%s", err, content, out)
		}
		return out
	}

	t.Run("file with an invalid org number", func(t *testing.T) {
		members := filepath.Join(dir, "members.json")
		good := active(newOrg(t))
		bad := active("917897469") // check digit wrong
		b, _ := json.Marshal(registrysim.Document{Authorizations: []authz.Authorization{good, bad}})
		if err := os.WriteFile(members, b, 0o600); err != nil {
			t.Fatal(err)
		}
		path, content := write("badfile.Caddyfile", "\t\tmembership kjernejournal {\n\t\t\tfile "+members+"\n\t\t}")
		out := mustFail(t, path, content)
		for _, want := range []string{members, "authorizations[1]", "not a valid organization number"} {
			if !strings.Contains(out, want) {
				t.Errorf("the error does not name %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "917897469") {
			t.Errorf("the error quotes the org number:\n%s", out)
		}

		// The same file fixed validates.
		b, _ = json.Marshal(registrysim.Document{Authorizations: []authz.Authorization{good}})
		if err := os.WriteFile(members, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := validate(t, path); err != nil {
			t.Errorf("validate failed on a good membership file: %v\n%s", err, out)
		}
	})

	t.Run("membership without registry or file", func(t *testing.T) {
		path, content := write("nosource.Caddyfile", "\t\tmembership kjernejournal {\n\t\t\tcache_ttl 1m\n\t\t}")
		out := mustFail(t, path, content)
		if !strings.Contains(out, "registry") || !strings.Contains(out, "file") {
			t.Errorf("the error does not say a registry or a file is needed:\n%s", out)
		}
		m := regexp.MustCompile(regexp.QuoteMeta(path) + `:(\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("the error does not name the file and line (%s:<line>):\n%s", path, out)
		}
		line, _ := strconv.Atoi(m[1])
		first := lineOf(content, "membership kjernejournal")
		if line < first || line > first+2 {
			t.Errorf("the error names line %d, want one of the membership block (%d–%d):\n%s", line, first, first+2, out)
		}
	})
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
