package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// TestMetricsRegistration registers the collectors in a fresh registry (a
// config load), again in the same one (a second handler), and in another
// (a reload), and checks the pre-resolved series are there.
func TestMetricsRegistration(t *testing.T) {
	for range 2 {
		reg := prometheus.NewPedanticRegistry()
		for range 2 {
			if err := registerMetrics(reg); err != nil {
				t.Fatal(err)
			}
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]int{}
		for _, mf := range mfs {
			names[mf.GetName()] = len(mf.GetMetric())
		}
		for _, n := range []string{"caddy_helseid_requests_total", "caddy_helseid_verification_duration_seconds",
			"caddy_helseid_membership_cache_results_total", "caddy_helseid_registry_calls_total",
			"caddy_helseid_jwks_refreshes_total", "caddy_helseid_replays_total"} {
			if names[n] == 0 {
				t.Errorf("%s not gathered", n)
			}
		}
		// One series per reason and route: the default route's at least,
		// and those of the routes other tests of this process provisioned.
		perRoute := len(authz.AllowReasons()) + len(authz.DenialReasons())
		if n := names["caddy_helseid_requests_total"]; n < perRoute || n%perRoute != 0 {
			t.Errorf("requests_total has %d series, want one per reason (%d) and route", n, perRoute)
		}
	}
}

// Counting a decision, a cache result or a registry call allocates nothing.
func TestMetricsNoAllocations(t *testing.T) {
	m := getMetrics()
	r := m.forRoute("kjernejournal")
	for name, fn := range map[string]func(){
		"allow":      func() { r.decided(outcomeAllow, authz.ReasonMember, time.Millisecond) },
		"deny":       func() { r.decided(outcomeDeny, "proof_replay", time.Millisecond) },
		"error":      func() { r.decided(outcomeError, authz.ReasonUnavailable, time.Millisecond) },
		"membership": func() { m.membershipResult(cache.TierLocal, cache.ResultHit) },
		"registry":   func() { m.registryCall("ok") },
		"jwks":       func() { m.jwksRefresh(true) },
	} {
		if a := testing.AllocsPerRun(200, fn); a != 0 {
			t.Errorf("%s: %v allocations per call", name, a)
		}
	}
}

// The route label: the route name, else the membership service, else
// "default"; never anything outside the closed alphabet.
func TestMetricsRouteLabel(t *testing.T) {
	for _, tc := range []struct {
		name, route, service, want, err string
	}{
		{"neither", "", "", "default", ""},
		{"membership service", "", "kjernejournal", "kjernejournal", ""},
		{"route over service", "pjd", "kjernejournal", "pjd", ""},
		{"route alone", "kj.v2_read-only", "", "kj.v2_read-only", ""},
		{"a path", "/kjernejournal/api", "", "", "must be 1 to 64"},
		{"a service that is no label", "", "kjerne journal", "", "name it with route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{Route: tc.route}
			if tc.service != "" {
				h.Membership = &MembershipConfig{Service: tc.service}
			}
			got, err := h.routeLabel()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("routeLabel() = %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("routeLabel() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestJWKSGauges(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	for _, tc := range []struct {
		name        string
		sts         []authz.KeyStatus
		age         float64
		fetched     bool
		wantFailing int
	}{
		{"nothing fetched yet", []authz.KeyStatus{{}}, 0, false, 0},
		{"first fetch failed", []authz.KeyStatus{{LastFailure: ago(time.Second)}}, 0, false, 1},
		{"fresh", []authz.KeyStatus{{LastSuccess: ago(time.Minute)}}, 60, true, 0},
		{"failed after a success", []authz.KeyStatus{{LastSuccess: ago(time.Hour), LastFailure: ago(time.Minute)}}, 3600, true, 1},
		{"recovered", []authz.KeyStatus{{LastSuccess: ago(time.Minute), LastFailure: ago(time.Hour)}}, 60, true, 0},
		{"the oldest of two", []authz.KeyStatus{{LastSuccess: ago(time.Minute)}, {LastSuccess: ago(2 * time.Hour)}}, 7200, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			age, fetched, failing := jwksGauges(tc.sts, now)
			if age != tc.age || fetched != tc.fetched || failing != tc.wantFailing {
				t.Fatalf("jwksGauges = %v, %v, %d; want %v, %v, %d", age, fetched, failing, tc.age, tc.fetched, tc.wantFailing)
			}
		})
	}
}

// Two routes count apart: a decision on one moves its series only.
func TestMetricsRoutesApart(t *testing.T) {
	m := getMetrics()
	a, b := m.forRoute("route-a"), m.forRoute("route-b")
	if m.forRoute("route-a") != a {
		t.Fatal("forRoute made a second set for one route")
	}
	count := func(route string) float64 {
		return testutil.ToFloat64(m.requests.WithLabelValues(outcomeDeny, "no_credentials", route))
	}
	a0, b0 := count("route-a"), count("route-b")
	a.decided(outcomeDeny, "no_credentials", time.Millisecond)
	a.decided(outcomeDeny, "no_credentials", time.Millisecond)
	b.decided(outcomeDeny, "no_credentials", time.Millisecond)
	if da, db := count("route-a")-a0, count("route-b")-b0; da != 2 || db != 1 {
		t.Fatalf("route-a went up by %v, route-b by %v; want 2 and 1", da, db)
	}
}

func TestServeHTTPMetrics(t *testing.T) {
	f := newHandlerFixture(t, withMembership(t))
	observe(f.h)
	m := getMetrics()
	count := func(outcome, reason string) float64 {
		// The route label is the membership service: the fixture names no route.
		return testutil.ToFloat64(m.requests.WithLabelValues(outcome, reason, testService))
	}
	before := map[string]float64{
		"allow/member":    count("allow", "member"),
		"deny/no_creds":   count("deny", "no_credentials"),
		"deny/not_member": count("deny", "not_member"),
		"local/miss":      testutil.ToFloat64(m.membership.WithLabelValues("local", "miss")),
		"local/hit":       testutil.ToFloat64(m.membership.WithLabelValues("local", "hit")),
		"replays":         testutil.ToFloat64(m.replays),
	}
	const url = "http://example.com/a"
	serve := func(r *http.Request) {
		if err := f.h.ServeHTTP(httptest.NewRecorder(), r, &recordingNext{}); err != nil {
			t.Fatal(err)
		}
	}
	serve(f.request(t, "GET", url, userToken(t, f, nil), url))
	serve(f.request(t, "GET", url, userToken(t, f, nil), url))
	serve(f.request(t, "GET", url, "", ""))
	serve(f.request(t, "GET", url, userToken(t, f, func(s *helseidsim.TokenSpec) { s.OrgParent = testOtherOrg }), url))
	r := f.request(t, "GET", url, userToken(t, f, nil), url)
	serve(r)
	again := f.request(t, "GET", url, "", "")
	again.Header = r.Header.Clone()
	serve(again)

	for k, want := range map[string]float64{
		"allow/member":    3,
		"deny/no_creds":   1,
		"deny/not_member": 1,
		"local/miss":      2, // testOrg once, testOtherOrg once
		"local/hit":       2,
		"replays":         1,
	} {
		var now float64
		switch k {
		case "allow/member":
			now = count("allow", "member")
		case "deny/no_creds":
			now = count("deny", "no_credentials")
		case "deny/not_member":
			now = count("deny", "not_member")
		case "local/miss":
			now = testutil.ToFloat64(m.membership.WithLabelValues("local", "miss"))
		case "local/hit":
			now = testutil.ToFloat64(m.membership.WithLabelValues("local", "hit"))
		case "replays":
			now = testutil.ToFloat64(m.replays)
		}
		if now-before[k] != want {
			t.Errorf("%s went up by %v, want %v", k, now-before[k], want)
		}
	}
}

func TestBreakerGauge(t *testing.T) {
	b := cache.NewBreaker("registry", cache.WithHalfOpenAfter(time.Hour))
	liveBreakers.add(b)
	defer liveBreakers.remove(b)
	reg := prometheus.NewPedanticRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	gauge := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "caddy_helseid_breaker_state" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "registry" {
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	if g := gauge(); g != 0 {
		t.Fatalf("closed breaker: gauge %v, want 0", g)
	}
	for range cache.BreakerFailures {
		_ = b.Do(context.Background(), func(context.Context) error { return errors.New("down") })
	}
	if g := gauge(); g != 2 {
		t.Fatalf("open breaker: gauge %v, want 2", g)
	}
}
