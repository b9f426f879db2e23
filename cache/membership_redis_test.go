package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
)

// replica is one gateway instance of a test: its cache, registry and client.
type replica struct {
	c      *CachedMembership
	reg    *fakeRegistry
	client redis.UniversalClient
	res    *results
}

// newReplica returns a replica on its own client of the test Redis, under
// prefix, telling time by clock.
func newReplica(t testing.TB, prefix string, clock authz.Clock, opts MembershipCacheOptions) *replica {
	t.Helper()
	r := &replica{reg: newFakeRegistry(clock), res: &results{}}
	if opts.Redis == nil {
		opts.Redis = testRedis(t)
	}
	r.client = opts.Redis
	opts.KeyPrefix, opts.Clock, opts.OnResult = prefix, clock, r.res.hook
	r.c = NewCachedMembership(r.reg, opts)
	return r
}

func TestMembershipRedisShared(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  *authz.Authorization
		ttl  time.Duration
	}{
		{"positive", member(testService, testOrg), DefaultMembershipPositiveTTL},
		{"negative", nil, DefaultMembershipNegativeTTL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			prefix := testPrefix(t, testRedis(t))
			a := newReplica(t, prefix, clock, MembershipCacheOptions{})
			b := newReplica(t, prefix, clock, MembershipCacheOptions{})
			a.reg.set(func(string, string) (*authz.Authorization, error) { return tc.rec, nil })

			fetched := lookup(t, a.c, testService, testOrg)
			clock.Advance(tc.ttl - time.Second)
			ans := lookup(t, b.c, testService, testOrg)
			if ans.Source != "redis" || ans.Stale || !ans.FetchedAt.Equal(fetched.FetchedAt) || (ans.Record == nil) != (tc.rec == nil) {
				t.Fatalf("B's answer %+v", ans)
			}
			if tc.rec != nil && *ans.Record != *tc.rec {
				t.Fatalf("B's record %+v, want %+v", ans.Record, tc.rec)
			}
			expectCalls(t, b.reg, 0)
			if b.res.get("redis", "hit") != 1 {
				t.Fatal("OnResult(redis, hit) not told")
			}
			// Now B holds it in-process, aged from the registry's answer.
			if ans := lookup(t, b.c, testService, testOrg); ans.Source != "local" {
				t.Fatalf("B's second answer from %s", ans.Source)
			}
			clock.Advance(time.Second)
			if ans := lookup(t, b.c, testService, testOrg); ans.Source != "registry" {
				t.Fatalf("B's answer at the TTL from %s", ans.Source)
			}
			expectCalls(t, b.reg, 1)
			expectCalls(t, a.reg, 1)
		})
	}
}

func TestMembershipRedisStale(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	a := newReplica(t, prefix, clock, MembershipCacheOptions{})
	b := newReplica(t, prefix, clock, MembershipCacheOptions{})
	fetched := lookup(t, a.c, testService, testOrg).FetchedAt
	b.reg.fail(fmt.Errorf("%w: 502", authz.ErrRegistryUnavailable))

	// B has nothing in-process; Redis holds A's answer past its TTL.
	clock.Advance(10 * time.Minute)
	ans := lookup(t, b.c, testService, testOrg)
	if !ans.Stale || ans.Source != "redis" || !ans.FetchedAt.Equal(fetched) || ans.Record == nil {
		t.Fatalf("stale answer %+v", ans)
	}
	clock.Advance(DefaultMembershipStaleFor)
	if _, err := b.c.Lookup(context.Background(), testService, testOrg); !errors.Is(err, authz.ErrRegistryUnavailable) {
		t.Fatalf("past StaleFor: %v", err)
	}
}

func TestMembershipRedisKey(t *testing.T) {
	client := testRedis(t)
	hook := &argsHook{}
	client.AddHook(hook)
	prefix := testPrefix(t, client)
	clock := newFakeClock()
	r := newReplica(t, prefix, clock, MembershipCacheOptions{Redis: client, StaleFor: 90 * time.Minute})

	for _, tc := range []struct{ service, key string }{
		{testService, prefix + "v1:membership:0:kjernejournal:" + testOrg},
		{"a:b c", prefix + "v1:membership:0:a%3Ab%20c:" + testOrg},
	} {
		lookup(t, r.c, tc.service, testOrg)
		args := hook.lastNamed("set")
		if len(args) != 5 || args[0] != "set" || args[1] != tc.key || args[3] != "px" || args[4] != int64(90*60*1000) {
			t.Fatalf("last command %q", args)
		}
		pttl, err := client.PTTL(context.Background(), tc.key).Result()
		if err != nil || pttl <= 89*time.Minute || pttl > 90*time.Minute {
			t.Fatalf("PTTL %s, %v", pttl, err)
		}
		raw, err := client.Get(context.Background(), tc.key).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(raw, &got); err != nil || len(got) != 2 || got["record"] == nil || got["fetched_at"] == nil {
			t.Fatalf("value %s (%v)", raw, err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, raw); err != nil || compact.Len() != len(raw) {
			t.Fatalf("value is not compact JSON: %s", raw)
		}
	}
}

func TestMembershipRedisBadValue(t *testing.T) {
	client := testRedis(t)
	prefix := testPrefix(t, client)
	key := prefix + "v1:membership:0:kjernejournal:" + testOrg
	for _, bad := range []string{"not json", `{"record":null}`} {
		t.Run(bad, func(t *testing.T) {
			if err := client.Set(context.Background(), key, bad, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			r := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{Redis: client})
			if ans := lookup(t, r.c, testService, testOrg); ans.Source != "registry" || ans.Record == nil {
				t.Fatalf("answer %+v", ans)
			}
			if r.res.get("redis", "error") != 1 {
				t.Fatal("a bad value was not an error of the Redis tier")
			}
			// The registry's answer replaced it.
			b := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{Redis: client})
			if ans := lookup(t, b.c, testService, testOrg); ans.Source != "redis" {
				t.Fatalf("second replica: from %s", ans.Source)
			}
		})
	}
}

func TestMembershipRedisDown(t *testing.T) {
	for name, br := range map[string]*Breaker{"no breaker": nil, "breaker": NewBreaker("redis")} {
		t.Run(name, func(t *testing.T) {
			clock := newFakeClock()
			r := newReplica(t, DefaultKeyPrefix, clock, MembershipCacheOptions{Redis: deadRedis(t), RedisBreaker: br})

			for i := range 10 {
				org := fmt.Sprintf("%09d", i)
				if ans := lookup(t, r.c, testService, org); ans.Source != "registry" || ans.Record == nil {
					t.Fatalf("with Redis down: %+v", ans)
				}
			}
			if ans := lookup(t, r.c, testService, fmt.Sprintf("%09d", 0)); ans.Source != "local" {
				t.Fatalf("second lookup from %s", ans.Source)
			}
			expectCalls(t, r.reg, 10)
			if r.res.get("redis", "error") != 10 {
				t.Fatalf("OnResult(redis, error) %d times, want 10", r.res.get("redis", "error"))
			}
			if br != nil && br.State() != "open" {
				t.Fatalf("breaker %s", br.State())
			}

			// The registry fails too: the local tier's last-known answer.
			r.reg.fail(fmt.Errorf("%w: 503", authz.ErrRegistryUnavailable))
			clock.Advance(DefaultMembershipPositiveTTL)
			if ans := lookup(t, r.c, testService, fmt.Sprintf("%09d", 0)); !ans.Stale || ans.Source != "local" {
				t.Fatalf("stale with Redis down: %+v", ans)
			}
			if _, err := r.c.Lookup(context.Background(), testService, testOrg); !errors.Is(err, authz.ErrRegistryUnavailable) {
				t.Fatalf("unknown with everything down: %v", err)
			}
			r.c.Invalidate(context.Background(), testService, "") // logs, does not block or panic
		})
	}
}

func TestMembershipSingleflightRedis(t *testing.T) {
	const n = 100
	client := testRedis(t)
	hook := &argsHook{}
	client.AddHook(hook)
	prefix := testPrefix(t, client)
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	release := reg.hold()
	defer release()
	c := NewCachedMembership(reg, MembershipCacheOptions{Redis: client, KeyPrefix: prefix, Clock: clock})

	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := c.Lookup(context.Background(), testService, testOrg); err != nil {
				t.Error(err)
			}
		})
	}
	<-reg.entered
	release()
	wg.Wait()
	expectCalls(t, reg, 1)
	gets := 0
	hook.mu.Lock()
	for _, args := range hook.args {
		if args[0] == "get" && strings.HasSuffix(args[1].(string), ":"+testOrg) {
			gets++
		}
	}
	hook.mu.Unlock()
	if gets != 1 {
		t.Fatalf("%d GETs of the entry, want 1", gets)
	}
}

// Every key the gateway writes to Redis has a TTL. The generation gets one when it is
// incremented, and every entry written under it renews it, in the entry's
// pipeline, with single-key commands only (Redis Cluster).
func TestMembershipRedisGenerationTTL(t *testing.T) {
	ctx := context.Background()
	client := testRedis(t)
	hook := &argsHook{}
	client.AddHook(hook)
	prefix := testPrefix(t, client)
	genKey := prefix + "v1:membership:gen"
	clock := newFakeClock()
	r := newReplica(t, prefix, clock, MembershipCacheOptions{Redis: client})
	const day = 24 * time.Hour
	pttl := func(key string) time.Duration {
		t.Helper()
		d, err := client.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	entryKey := func(gen int, org string) string {
		return fmt.Sprintf("%sv1:membership:%d:%s:%s", prefix, gen, testService, org)
	}
	orgs := validOrgs(4)

	// Generation 0 was never incremented: there is no key to refresh.
	lookup(t, r.c, testService, orgs[0])
	if d := pttl(genKey); d != -2 {
		t.Fatalf("generation 0: PTTL of the generation key %s, want no key (-2)", d)
	}
	if pipe := hook.lastPipeWith("set"); len(pipe) != 1 || pipe[0][0] != "set" {
		t.Fatalf("the write under generation 0 sent %q, want the SET alone", pipe)
	}

	// A wildcard invalidation increments it, with its TTL.
	r.c.Invalidate(ctx, testService, "")
	if d := pttl(genKey); d <= MembershipGenerationTTL-time.Minute || d > MembershipGenerationTTL {
		t.Fatalf("after INCR: PTTL %s, want about %s", d, MembershipGenerationTTL)
	}

	// An entry written under it renews the TTL, in the same pipeline.
	if err := client.PExpire(ctx, genKey, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	lookup(t, r.c, testService, orgs[1])
	if d := pttl(genKey); d <= MembershipGenerationTTL-time.Minute || d > MembershipGenerationTTL {
		t.Fatalf("after an entry was written: PTTL %s, want about %s", d, MembershipGenerationTTL)
	}
	pipe := hook.lastPipeWith("set")
	if len(pipe) != 2 || pipe[0][0] != "set" || pipe[0][1] != entryKey(1, orgs[1]) ||
		pipe[1][0] != "pexpire" || pipe[1][1] != genKey || pipe[1][2] != int64(MembershipGenerationTTL/time.Millisecond) {
		t.Fatalf("the write sent %q, want SET of the entry and PEXPIRE of the generation", pipe)
	}
	for _, args := range pipe {
		if args[0] == "multi" || args[0] == "exec" {
			t.Fatalf("the entry and the generation are in different slots: no MULTI, got %q", pipe)
		}
	}
	if d := pttl(entryKey(1, orgs[1])); d <= 0 {
		t.Fatalf("entry PTTL %s", d)
	}

	// The generation expired (no replica wrote for a month): the entry just
	// written under it is deleted, and the generation read again.
	if err := client.Del(ctx, genKey).Err(); err != nil {
		t.Fatal(err)
	}
	lookup(t, r.c, testService, orgs[2])
	if n := client.Exists(ctx, entryKey(1, orgs[2])).Val(); n != 0 {
		t.Fatal("an entry written under an expired generation was kept")
	}
	if d := pttl(genKey); d != -2 {
		t.Fatalf("the PEXPIRE of a missing generation created it: PTTL %s", d)
	}
	lookup(t, r.c, testService, orgs[3])
	if n := client.Exists(ctx, entryKey(0, orgs[3])).Val(); n != 1 {
		t.Fatal("after its generation expired the replica did not go back to generation 0")
	}

	// An entry kept longer than MembershipGenerationTTL keeps the generation
	// at least as long.
	if got := generationTTL(40 * day); got != 40*day {
		t.Fatalf("generationTTL(40d) = %s", got)
	}
	if got := generationTTL(time.Hour); got != MembershipGenerationTTL {
		t.Fatalf("generationTTL(1h) = %s", got)
	}
}

// validOrgs returns n distinct valid organization numbers.
func validOrgs(n int) []string {
	out := make([]string, 0, n)
	for i := 800000000; len(out) < n; i++ {
		if s := fmt.Sprintf("%09d", i); authz.ValidOrgNumber(s) {
			out = append(out, s)
		}
	}
	return out
}
