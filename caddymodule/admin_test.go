package caddymodule

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// memberSource answers that every organization is a member.
type memberSource struct{}

func (memberSource) Lookup(_ context.Context, service, org string) (authz.Answer, error) {
	return authz.Answer{FetchedAt: time.Now(), Record: &authz.Authorization{
		Organization: org, Service: service, Member: true, Status: "active",
	}}, nil
}

// adminRedis returns a pooled Redis of cfg, as redisClient builds one.
func adminRedis(t *testing.T, cfg cache.RedisConfig) *pooledRedis {
	t.Helper()
	opts, err := cfg.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewUniversalClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return &pooledRedis{client: c, breaker: cache.NewBreaker("redis"), addrs: opts.Addrs, redact: cfg.Redact}
}

// adminCache returns a membership cache on pr (nil: in-process only) under
// prefix, holding testOrg.
func adminCache(t *testing.T, pr *pooledRedis, prefix string) *pooledMembership {
	t.Helper()
	opts := cache.MembershipCacheOptions{}
	if pr != nil {
		opts.Redis, opts.RedisBreaker, opts.KeyPrefix = pr.client, pr.breaker, prefix
	}
	pm := &pooledMembership{cached: cache.NewCachedMembership(memberSource{}, opts), redis: pr, prefix: prefix, service: testService}
	if _, err := pm.cached.Lookup(context.Background(), testService, testOrg); err != nil {
		t.Fatal(err)
	}
	if pm.cached.Len() != 1 {
		t.Fatal("not cached")
	}
	return pm
}

// postInvalidate sends body to the endpoint with ms as the process's caches.
func postInvalidate(t *testing.T, ms []*pooledMembership, body string) (int, invalidateResponse, string) {
	t.Helper()
	for _, m := range ms {
		memberships.add(m)
	}
	defer func() {
		for _, m := range ms {
			memberships.remove(m)
		}
	}()
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/helseid/membership/invalidate", strings.NewReader(body))
	if err := (&adminAPI{}).invalidate(w, r); err != nil {
		t.Fatalf("invalidate: %v", err)
	}
	var resp invalidateResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	return w.Code, resp, w.Body.String()
}

// Redis unreachable: every cache of this process evicts at once, and the
// answer is a 502 naming the Redis, the steps and the errors, without the
// password.
func TestAdminInvalidateRedisDown(t *testing.T) {
	const password = "pw-Redis-admin-test-7f3a"
	dead := adminRedis(t, cache.RedisConfig{Addrs: []string{deadAddr(t)}, Password: password})
	a := adminCache(t, dead, "helsegate-test-admin:")
	b := adminCache(t, dead, "helsegate-test-admin:") // same Redis and prefix: one publication
	local := adminCache(t, nil, "")

	code, resp, body := postInvalidate(t, []*pooledMembership{a, b, local},
		`{"service":"`+testService+`","organization":"`+testOrg+`"}`)
	if code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502: %s", code, body)
	}
	t.Log(body)
	for _, m := range []*pooledMembership{a, b, local} {
		if m.cached.Len() != 0 {
			t.Error("a cache of this process kept the invalidated answer")
		}
	}
	if resp.Caches != 3 || resp.Published != 0 || resp.Error == "" || len(resp.Failed) != 2 {
		t.Fatalf("answer %s", body)
	}
	steps := map[string]bool{}
	for _, f := range resp.Failed {
		steps[f.Step] = true
		if len(f.Redis) != 1 || f.Redis[0] != dead.addrs[0] || f.KeyPrefix != "helsegate-test-admin:" || f.Error == "" {
			t.Errorf("failure %+v", f)
		}
	}
	if !steps["publish"] || !steps["redis_tier"] {
		t.Errorf("steps %v, want publish and redis_tier", steps)
	}
	if strings.Contains(body, password) {
		t.Fatalf("the answer holds the password: %s", body)
	}
}

// Redis up: the publishing process evicts its own caches without waiting for
// its subscription, and published is what PUBLISH answered.
func TestAdminInvalidatePublished(t *testing.T) {
	addr := os.Getenv("HELSEGATE_TEST_REDIS")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	live := adminRedis(t, cache.RedisConfig{Addrs: []string{addr}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := live.client.Ping(ctx).Err(); err != nil {
		t.Fatalf("no Redis at %s (set HELSEGATE_TEST_REDIS): %v", addr, err)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	prefix := "helsegate-test-admin:" + hex.EncodeToString(id) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		iter := live.client.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			live.client.Del(ctx, iter.Val())
		}
	})
	a := adminCache(t, live, prefix)
	b := adminCache(t, live, prefix)

	// Nobody listens yet: both caches are evicted all the same.
	code, resp, body := postInvalidate(t, []*pooledMembership{a, b}, `{"service":"`+testService+`"}`)
	if code != http.StatusOK || resp.Caches != 2 || resp.Published != 0 || resp.Error != "" || len(resp.Failed) != 0 {
		t.Fatalf("answer %d %s", code, body)
	}
	if a.cached.Len() != 0 || b.cached.Len() != 0 {
		t.Fatal("the publishing process kept answers it invalidated")
	}

	// Another replica listens: PUBLISH counts it.
	other := adminCache(t, live, prefix)
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	other.cached.Subscribe(sctx)
	ch := cache.InvalidationChannel(prefix)
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := live.client.PubSubNumSub(context.Background(), ch).Result()
		if err == nil && n[ch] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other replica did not subscribe")
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, resp, body = postInvalidate(t, []*pooledMembership{a, b}, `{"all":true}`)
	if code != http.StatusOK || resp.Published != 1 {
		t.Fatalf("answer %d %s, want published 1", code, body)
	}
}

// A service no route checks gets 404 naming it, not a 200 that evicted nothing.
func TestInvalidateUnknownService(t *testing.T) {
	pm := adminCache(t, nil, "")
	memberships.add(pm)
	defer memberships.remove(pm)
	for _, body := range []string{`{"service":"persontjenesten"}`, `{"service":"persontjenesten","organization":"` + testOrg + `"}`} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/helseid/membership/invalidate", strings.NewReader(body))
		err := (&adminAPI{}).invalidate(w, r)
		var ae caddy.APIError
		if !errors.As(err, &ae) || ae.HTTPStatus != http.StatusNotFound || !strings.Contains(ae.Err.Error(), `"persontjenesten"`) {
			t.Errorf("%s: %v, want a 404 naming the service", body, err)
		}
		if pm.cached.Len() != 1 {
			t.Errorf("%s: the cache of %s was evicted", body, testService)
		}
	}
}
