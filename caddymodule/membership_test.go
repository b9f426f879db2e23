package caddymodule

import (
	"fmt"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/cache/registry"
)

// The cache's fill is bounded by the registry timeout plus room for the Redis
// tier, so a registry at or past the old fixed 10 s bound still opens its
// breaker.
func TestMembershipFetchTimeoutFromRegistryTimeout(t *testing.T) {
	for _, timeout := range []time.Duration{0, 10 * time.Second, 15 * time.Second} {
		t.Run(timeout.String(), func(t *testing.T) {
			f := newHandlerFixture(t, func(h *Handler) {
				h.Membership = &MembershipConfig{Service: testService, Registry: "http://" + deadAddr(t), Timeout: caddy.Duration(timeout)}
			})
			registryTimeout := timeout
			if registryTimeout == 0 {
				registryTimeout = registry.DefaultTimeout
			}
			got := f.h.membership.Source.(*cache.CachedMembership).FetchTimeout()
			if want := cache.MembershipFetchTimeout(registryTimeout, 0); got != want || got <= registryTimeout {
				t.Fatalf("fill bound %s for a registry timeout of %s, want %s", got, registryTimeout, want)
			}
		})
	}
}

// A file source has no Redis tier in front of it (a file is per-replica
// configuration), and a successful reload evicts the in-process tier: a
// member removed from the file is refused right after the reload.
func TestMembershipFileReloadEvicts(t *testing.T) {
	path := membershipFile(t)
	f := newHandlerFixture(t, func(h *Handler) {
		h.Membership = &MembershipConfig{Service: testService, File: path}
		// With Redis configured: were the Redis tier in front of the file,
		// every miss would count a Redis hit, miss or error.
		h.Redis = &cache.RedisConfig{URL: "redis://" + testRedisAddr(), KeyPrefix: seededPrefix(t, "helsegate-test-file-")}
	})
	audit, _ := observe(f.h)
	m := getMetrics()
	redisTier := func() float64 {
		n := 0.0
		for _, res := range []string{cache.ResultHit, cache.ResultMiss, cache.ResultError} {
			n += testutil.ToFloat64(m.membership.WithLabelValues(cache.TierRedis, res))
		}
		return n
	}
	before := redisTier()
	const url = "http://example.com/fhir/Patient"
	serve := func() string {
		t.Helper()
		if err := f.h.ServeHTTP(httptest.NewRecorder(), f.request(t, "GET", url, userToken(t, f, nil), url), &recordingNext{}); err != nil {
			t.Fatal(err)
		}
		entries := audit.TakeAll()
		if len(entries) != 1 {
			t.Fatalf("want one audit entry, got %d", len(entries))
		}
		return entries[0].ContextMap()["reason"].(string)
	}
	for range 2 { // the second from the in-process tier
		if reason := serve(); reason != authz.ReasonMember {
			t.Fatalf("a member in the file: %s", reason)
		}
	}
	if n := redisTier() - before; n != 0 {
		t.Errorf("the file source's lookups consulted the Redis tier %v times", n)
	}

	doc := fmt.Sprintf(`{"authorizations":[{"organization":%q,"service":%q,"member":true,"status":"active","valid_to":null}]}`, testOtherOrg, testService)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var file *registry.File
	for _, pm := range memberships.list() {
		if pm.file != nil && pm.file.Path() == path {
			file = pm.file
		}
	}
	if file == nil {
		t.Fatal("the route's membership file is not listed")
	}
	if err := file.Reload(); err != nil {
		t.Fatal(err)
	}
	if reason := serve(); reason != authz.ReasonNotMember {
		t.Fatalf("the member removed from the file, right after the reload: %s, want %s", reason, authz.ReasonNotMember)
	}
	if n := redisTier() - before; n != 0 {
		t.Errorf("the file source's lookups consulted the Redis tier %v times", n)
	}
}
