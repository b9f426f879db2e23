package cache

import (
	"context"
	"fmt"
	"testing"

	"github.com/helsegate/helsegate/authz"
)

// BenchmarkLocalHit measures a warm in-process hit, the membership cost of
// almost every request. It must not allocate.
func BenchmarkLocalHit(b *testing.B) {
	const orgs = 1024
	names := make([]string, orgs)
	for i := range names {
		names[i] = fmt.Sprintf("%09d", i)
	}
	c := NewCachedMembership(newFakeRegistry(authz.SystemClock), MembershipCacheOptions{})
	ctx := context.Background()
	for _, org := range names {
		lookup(b, c, testService, org)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := c.Lookup(ctx, testService, names[i%orgs]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := c.Lookup(ctx, testService, names[i%orgs]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkRedisHit measures a lookup that misses in-process and hits in
// Redis: one GET round trip and a JSON decode. The in-process entry is
// dropped before each lookup.
func BenchmarkRedisHit(b *testing.B) {
	client := testRedis(b)
	prefix := testPrefix(b, client)
	opts := MembershipCacheOptions{Redis: client, KeyPrefix: prefix, RedisBreaker: NewBreaker("redis")}
	lookup(b, NewCachedMembership(newFakeRegistry(authz.SystemClock), opts), testService, testOrg)

	reg := newFakeRegistry(authz.SystemClock)
	c := NewCachedMembership(reg, opts)
	k := tierKey{service: testService, org: testOrg}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c.local.evict(k.service, k.org)
		ans, err := c.Lookup(ctx, k.service, k.org)
		if err != nil || ans.Source != "redis" {
			b.Fatal(ans, err)
		}
	}
	if reg.calls.Load() != 0 {
		b.Fatal("the registry was called")
	}
}

// BenchmarkMembershipCheckLocalHit is the whole membership check of a
// request as the handler runs it (org number validation, the cache's warm
// in-process hit, the decision): the goal is under a microsecond and no
// allocation.
func BenchmarkMembershipCheckLocalHit(b *testing.B) {
	check, p := warmMembershipCheck(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if derr := check.Check(ctx, p); derr != nil {
			b.Fatal(derr)
		}
	}
}

// The warm membership check allocates nothing (what the benchmark reports,
// asserted: an allocation count, not a time).
func TestMembershipCheckLocalHitAllocs(t *testing.T) {
	check, p := warmMembershipCheck(t)
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() {
		if derr := check.Check(ctx, p); derr != nil {
			t.Fatal(derr)
		}
	}); n != 0 {
		t.Fatalf("a warm membership check allocates %v times", n)
	}
}

// A Redis hit is one round trip: a single GET, once the generation is known.
func TestMembershipRedisHitIsOneRoundTrip(t *testing.T) {
	client := testRedis(t)
	prefix := testPrefix(t, client)
	opts := MembershipCacheOptions{Redis: client, KeyPrefix: prefix, RedisBreaker: NewBreaker("redis")}
	lookup(t, NewCachedMembership(newFakeRegistry(authz.SystemClock), opts), testService, testOrg) // fills Redis

	reg := newFakeRegistry(authz.SystemClock)
	c := NewCachedMembership(reg, opts)
	lookup(t, c, testService, "974760673") // learns the generation
	hook := &argsHook{}
	client.AddHook(hook)
	ans, err := c.Lookup(context.Background(), testService, testOrg)
	if err != nil || ans.Source != "redis" {
		t.Fatalf("want a Redis hit, got %+v, %v", ans, err)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if len(hook.args) != 1 || hook.args[0][0] != "get" {
		t.Fatalf("a Redis hit sent %v, want one GET", hook.args)
	}
	if reg.calls.Load() != 1 {
		t.Fatalf("registry calls %d, want 1 (the other organization only)", reg.calls.Load())
	}
}

// warmMembershipCheck is a membership check whose in-process tier already
// holds the answer for the principal it returns.
func warmMembershipCheck(tb testing.TB) (*authz.MembershipCheck, *authz.Principal) {
	tb.Helper()
	check := &authz.MembershipCheck{
		Service: testService,
		Rule:    authz.OrgParent,
		Source:  NewCachedMembership(newFakeRegistry(authz.SystemClock), MembershipCacheOptions{}),
		Clock:   authz.SystemClock,
	}
	p := &authz.Principal{OrgParent: testOrg}
	if derr := check.Check(context.Background(), p); derr != nil {
		tb.Fatal(derr)
	}
	return check, p
}
