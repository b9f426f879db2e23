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
	k := memKey{service: testService, org: testOrg}
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
