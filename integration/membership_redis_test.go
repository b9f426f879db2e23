package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

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
