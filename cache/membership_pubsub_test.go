package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// eventually polls cond until it holds or within fails the test: the one
// place these tests wait on the wall clock, for pub/sub delivery.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// events counts what OnInvalidation is told.
type events struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *events) hook(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[name]++
}

func (e *events) get(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[name]
}

// subscribed starts Subscribe on every replica and waits until Redis counts
// them all as subscribers of the channel.
func subscribed(t *testing.T, prefix string, rs ...*replica) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, r := range rs {
		r.c.Subscribe(ctx)
		r.c.Subscribe(ctx) // a second call is a no-op
	}
	ch := InvalidationChannel(prefix)
	eventually(t, 5*time.Second, "subscriptions", func() bool {
		n, err := rs[0].client.PubSubNumSub(context.Background(), ch).Result()
		return err == nil && n[ch] == int64(len(rs))
	})
}

// held reports whether r holds (service, org) in-process.
func held(r *replica, service, org string) bool {
	return r.c.local.get(tierKey{service: service, org: org}) != nil
}

func TestMembershipPubSubPair(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	a := newReplica(t, prefix, clock, MembershipCacheOptions{})
	b := newReplica(t, prefix, clock, MembershipCacheOptions{})
	subscribed(t, prefix, a, b)

	for _, r := range []*replica{a, b} {
		lookup(t, r.c, testService, testOrg)
		lookup(t, r.c, testService, otherOrg)
	}
	expectCalls(t, a.reg, 2)
	expectCalls(t, b.reg, 0) // warm from Redis

	if _, err := Publish(context.Background(), a.client, prefix, testService, testOrg); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "B evicts", func() bool { return !held(b, testService, testOrg) })
	eventually(t, time.Second, "A evicts", func() bool { return !held(a, testService, testOrg) })
	if !held(b, testService, otherOrg) {
		t.Fatal("B evicted an org the message did not name")
	}
	// Publish deleted the Redis entry: B asks its registry.
	if ans := lookup(t, b.c, testService, testOrg); ans.Source != "registry" {
		t.Fatalf("after the invalidation B answered from %s", ans.Source)
	}
	expectCalls(t, b.reg, 1)
	// And that answer is shared again.
	if ans := lookup(t, a.c, testService, testOrg); ans.Source != "redis" {
		t.Fatalf("A answered from %s", ans.Source)
	}
}

func TestMembershipPubSubWildcards(t *testing.T) {
	const svc2 = "persontjenesten"
	for _, tc := range []struct {
		name, service, org string
		gone, kept         []tierKey
	}{
		{"all", "", "", []tierKey{{testService, testOrg}, {svc2, otherOrg}}, nil},
		{"service", testService, "", []tierKey{{testService, testOrg}, {testService, otherOrg}}, []tierKey{{svc2, otherOrg}}},
		{"organization", "", testOrg, []tierKey{{testService, testOrg}, {svc2, testOrg}}, []tierKey{{svc2, otherOrg}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			prefix := testPrefix(t, testRedis(t))
			a := newReplica(t, prefix, clock, MembershipCacheOptions{})
			var ev events
			b := newReplica(t, prefix, clock, MembershipCacheOptions{OnInvalidation: ev.hook})
			subscribed(t, prefix, a, b)
			keys := append(append([]tierKey{}, tc.gone...), tc.kept...)
			for _, r := range []*replica{a, b} {
				for _, k := range keys {
					lookup(t, r.c, k.service, k.org)
				}
			}
			expectCalls(t, b.reg, 0)

			if _, err := Publish(context.Background(), a.client, prefix, tc.service, tc.org); err != nil {
				t.Fatal(err)
			}
			eventually(t, time.Second, "B applies", func() bool { return ev.get(InvalidationApplied) == 1 })
			for _, k := range tc.gone {
				if held(b, k.service, k.org) {
					t.Errorf("B still holds %v", k)
				}
			}
			for _, k := range tc.kept {
				if !held(b, k.service, k.org) {
					t.Errorf("B dropped %v", k)
				}
			}
			// The Redis tier moved to a new generation: B's next misses go
			// to its registry, not to the old entries.
			for _, k := range tc.gone {
				if ans := lookup(t, b.c, k.service, k.org); ans.Source != "registry" {
					t.Errorf("%v after the invalidation from %s", k, ans.Source)
				}
			}
			expectCalls(t, b.reg, len(tc.gone))
			if gen, err := readGeneration(context.Background(), a.client, prefix); err != nil || gen != 1 {
				t.Fatalf("generation %d, %v", gen, err)
			}
		})
	}
}

func TestMembershipInvalidateRedis(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	a := newReplica(t, prefix, clock, MembershipCacheOptions{})
	b := newReplica(t, prefix, clock, MembershipCacheOptions{})
	lookup(t, a.c, testService, testOrg)
	lookup(t, a.c, testService, otherOrg)

	// A pair: deleted from Redis, so B (not subscribed) asks its registry.
	a.c.Invalidate(context.Background(), testService, testOrg)
	if held(a, testService, testOrg) {
		t.Fatal("A still holds the pair")
	}
	if ans := lookup(t, b.c, testService, testOrg); ans.Source != "registry" {
		t.Fatalf("B after a pair invalidation: from %s", ans.Source)
	}
	// All: A moves to a new generation at once; its next lookup misses Redis.
	a.c.Invalidate(context.Background(), "", "")
	if a.c.Len() != 0 {
		t.Fatal("A still holds entries")
	}
	if ans := lookup(t, a.c, testService, otherOrg); ans.Source != "registry" {
		t.Fatalf("A after invalidating all: from %s", ans.Source)
	}
}

func TestMembershipPubSubMalformed(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	var ev events
	b := newReplica(t, prefix, clock, MembershipCacheOptions{OnInvalidation: ev.hook})
	subscribed(t, prefix, b)
	lookup(t, b.c, testService, testOrg)

	ch := InvalidationChannel(prefix)
	bad := []string{"not json", `{}`, `{"all":false}`, `{"all":true,"service":"kjernejournal"}`, `["kjernejournal"]`, `{"service":1}`}
	for _, msg := range bad {
		if err := b.client.Publish(context.Background(), ch, msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, time.Second, "malformed messages counted", func() bool { return ev.get(InvalidationMalformed) == len(bad) })
	if !held(b, testService, testOrg) || ev.get(InvalidationApplied) != 0 {
		t.Fatal("a malformed message evicted")
	}
	// The subscriber goes on.
	if _, err := Publish(context.Background(), b.client, prefix, testService, testOrg); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "B evicts", func() bool { return !held(b, testService, testOrg) })
}

func TestMembershipPubSubResubscribe(t *testing.T) {
	clock := newFakeClock()
	admin := testRedis(t)
	prefix := testPrefix(t, admin)

	// B's client has a name of its own, so the test can cut exactly its
	// connections.
	id := make([]byte, 6)
	_, _ = rand.Read(id)
	name := "helsegate-test-" + hex.EncodeToString(id)
	opts, err := RedisConfig{Addrs: []string{testRedisAddr()}}.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	opts.ClientName = name
	bClient := redis.NewUniversalClient(opts)
	t.Cleanup(func() { _ = bClient.Close() })

	var ev events
	b := newReplica(t, prefix, clock, MembershipCacheOptions{Redis: bClient, OnInvalidation: ev.hook})
	subscribed(t, prefix, b)
	lookup(t, b.c, testService, testOrg)

	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, " name="+name+" ") {
			continue
		}
		var cid int64
		if _, err := fmt.Sscanf(line, "id=%d ", &cid); err != nil {
			t.Fatal(err)
		}
		if err := admin.ClientKillByFilter(context.Background(), "ID", fmt.Sprint(cid)).Err(); err != nil {
			t.Fatal(err)
		}
		killed++
	}
	if killed == 0 {
		t.Fatalf("no connection named %s in CLIENT LIST", name)
	}

	eventually(t, 5*time.Second, "resubscribed", func() bool { return ev.get(InvalidationResubscribed) == 1 })
	if held(b, testService, testOrg) {
		t.Fatal("messages may have been lost, yet B kept its entries")
	}
	lookup(t, b.c, testService, testOrg)
	if _, err := Publish(context.Background(), admin, prefix, testService, testOrg); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "B evicts after resubscribing", func() bool { return !held(b, testService, testOrg) })
}

func TestMembershipSubscribeStops(t *testing.T) {
	prefix := testPrefix(t, testRedis(t))
	b := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	b.c.Subscribe(ctx)
	ch := InvalidationChannel(prefix)
	count := func() int64 {
		n, _ := b.client.PubSubNumSub(context.Background(), ch).Result()
		return n[ch]
	}
	eventually(t, 5*time.Second, "subscribed", func() bool { return count() == 1 })
	cancel()
	eventually(t, 5*time.Second, "unsubscribed", func() bool { return count() == 0 })
}

// SubscribeOnUse dials nothing until a lookup misses the in-process tier.
func TestMembershipSubscribeOnUse(t *testing.T) {
	prefix := testPrefix(t, testRedis(t))
	b := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.c.SubscribeOnUse(ctx)
	ch := InvalidationChannel(prefix)
	count := func() int64 {
		n, _ := b.client.PubSubNumSub(context.Background(), ch).Result()
		return n[ch]
	}
	if b.c.subscribed.Load() || count() != 0 {
		t.Fatal("subscribed before any lookup")
	}
	lookup(t, b.c, testService, testOrg)
	eventually(t, 5*time.Second, "subscribed after the first miss", func() bool { return count() == 1 })
}

// The first lookups wait (boundedly) for the subscription: against a Redis
// that never confirms, the lookup goes ahead and says so.
func TestMembershipFirstLookupWaitsForSubscription(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = conn.Close() })
		}
	}()
	opts, err := RedisConfig{Addrs: []string{ln.Addr().String()}}.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewUniversalClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	b := newReplica(t, "helsegate-test:", newFakeClock(), MembershipCacheOptions{Redis: client, RedisBreaker: NewBreaker("redis")})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.c.SubscribeOnUse(ctx)
	if _, err := b.c.Lookup(context.Background(), testService, testOrg); err != nil {
		t.Fatal(err)
	}
	if !b.c.unconfirmedUse.Load() {
		t.Fatal("the first lookup went ahead of the subscription without waiting for it")
	}
}

// What was cached before a subscription was confirmed is dropped at the
// first confirmation: invalidations published meanwhile were missed.
func TestMembershipFirstConfirmationClearsUnconfirmed(t *testing.T) {
	prefix := testPrefix(t, testRedis(t))
	b := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{})
	lookup(t, b.c, testService, testOrg)
	if !held(b, testService, testOrg) {
		t.Fatal("not cached")
	}
	b.c.unconfirmedUse.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.c.Subscribe(ctx)
	eventually(t, 5*time.Second, "cleared at the first confirmation", func() bool { return !held(b, testService, testOrg) })
}
