package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
)

// waitLimit only keeps a broken test from hanging: no assertion is about how
// long anything took.
const waitLimit = 10 * time.Second

var errRegistryDown = fmt.Errorf("%w: 503", authz.ErrRegistryUnavailable)

// recv returns what ch sends, failing the test if nothing comes.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("%s: nothing after %s", what, waitLimit)
		panic("unreachable")
	}
}

// drain empties the registry's entered channel.
func drain(reg *fakeRegistry) {
	for {
		select {
		case <-reg.entered:
		default:
			return
		}
	}
}

// failingWithStale returns a cache whose answer for testOrg is past its TTL
// and whose registry is failing: one lookup already found it failing and was
// served the last-known answer. The registry still fails (fail) until set.
func failingWithStale(t *testing.T, opts MembershipCacheOptions) (*CachedMembership, *fakeRegistry, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	opts.Clock = clock
	c := NewCachedMembership(reg, opts)
	lookup(t, c, testService, testOrg)
	clock.Advance(DefaultMembershipPositiveTTL)
	reg.fail(errRegistryDown)
	// The registry worked until now: this lookup waits for it, finds it
	// failing and is served the last-known answer.
	if ans := lookup(t, c, testService, testOrg); !ans.Stale {
		t.Fatalf("lookup with the registry failing: %+v, want stale", ans)
	}
	if !c.failing.Load() {
		t.Fatal("a failed registry call did not mark the registry failing")
	}
	expectCalls(t, reg, 2)
	drain(reg)
	return c, reg, clock
}

// While the registry is failing and hangs, a last-known answer inside
// StaleFor is served without waiting for it; concurrent lookups of that key
// make one background call, whose answer, once the registry answers, is the
// cache's.
func TestMembershipStaleWhileFailingAnswersAtOnce(t *testing.T) {
	var res results
	c, reg, clock := failingWithStale(t, MembershipCacheOptions{OnResult: res.hook})
	reg.set(nil) // answers again, once released
	release := reg.hold()
	defer release()
	stalesBefore := res.get(TierRegistry, ResultStale)

	const n = 50
	answers := make(chan authz.Answer, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ans, err := c.Lookup(context.Background(), testService, testOrg)
			if err != nil {
				t.Errorf("lookup: %v", err)
			}
			answers <- ans
		})
	}
	// Every lookup returns while the registry still holds the refresh.
	for range n {
		ans := recv(t, answers, "a lookup with a stale answer, the registry hanging")
		if !ans.Stale || ans.Record == nil || ans.Source != TierLocal {
			t.Fatalf("answer %+v, want the stale in-process answer", ans)
		}
	}
	wg.Wait()
	recv(t, reg.entered, "the background refresh reaching the registry")
	expectCalls(t, reg, 3) // the warm-up, the failed one, one refresh for all n
	if got := res.get(TierRegistry, ResultStale) - stalesBefore; got != n {
		t.Errorf("OnResult(registry, stale) %d times, want %d", got, n)
	}

	// The registry answers: the refresh stores it, the next lookup is fresh.
	release()
	eventually(t, waitLimit, "the background refresh storing its answer", func() bool {
		e := c.local.get(tierKey{service: testService, org: testOrg})
		return e != nil && clock.Now().Before(e.freshUntil)
	})
	if ans := lookup(t, c, testService, testOrg); ans.Stale || ans.Source != TierLocal || !ans.FetchedAt.Equal(clock.Now()) {
		t.Fatalf("after the refresh: %+v, want the refreshed answer from the in-process tier", ans)
	}
	expectCalls(t, reg, 3)
	if c.failing.Load() {
		t.Fatal("a successful refresh left the registry marked failing")
	}
}

// With the registry working again, an expired answer is refreshed
// synchronously: the lookup waits for the registry and gets its answer, so a
// revoked membership is not accepted past its TTL.
func TestMembershipExpiredWaitsWhileRegistryWorks(t *testing.T) {
	c, reg, clock := failingWithStale(t, MembershipCacheOptions{})
	reg.set(nil)
	lookup(t, c, testService, testOrg) // stale; its refresh succeeds
	eventually(t, waitLimit, "the registry marked working", func() bool { return !c.failing.Load() })

	clock.Advance(DefaultMembershipPositiveTTL)
	revoked := member(testService, testOrg)
	revoked.Member = false
	reg.set(func(string, string) (*authz.Authorization, error) { return revoked, nil })
	drain(reg)
	release := reg.hold()
	defer release()
	ch := goLookup(t, c, testService, testOrg)
	recv(t, reg.entered, "the lookup asking the registry")
	select {
	case ans := <-ch:
		t.Fatalf("answered %+v before the registry did", ans)
	default:
	}
	release()
	ans := recv(t, ch, "the lookup")
	if ans.Stale || ans.Source != "registry" || ans.Record == nil || ans.Record.Member {
		t.Fatalf("answer %+v, want the registry's fresh not-a-member", ans)
	}
}

// Past StaleFor nothing is served stale: the lookup waits for the registry
// and gets its error, as before.
func TestMembershipPastStaleForWaits(t *testing.T) {
	c, reg, clock := failingWithStale(t, MembershipCacheOptions{})
	clock.Advance(DefaultMembershipStaleFor)
	release := reg.hold()
	defer release()
	errs := make(chan error, 1)
	go func() {
		_, err := c.Lookup(context.Background(), testService, testOrg)
		errs <- err
	}()
	recv(t, reg.entered, "the lookup asking the registry")
	select {
	case err := <-errs:
		t.Fatalf("returned %v before the registry answered", err)
	default:
	}
	release()
	if err := recv(t, errs, "the lookup"); !errors.Is(err, authz.ErrRegistryUnavailable) {
		t.Fatalf("past StaleFor: %v, want ErrRegistryUnavailable", err)
	}
}

// The background refresh runs on the cache's lifetime context: the request
// that started it going away does not end it, the cache's end does.
func TestMembershipRefreshContext(t *testing.T) {
	t.Run("outlives the request", func(t *testing.T) {
		c, reg, clock := failingWithStale(t, MembershipCacheOptions{})
		reg.set(nil)
		release := reg.hold()
		defer release()
		ctx, cancel := context.WithCancel(context.Background())
		ans, err := c.Lookup(ctx, testService, testOrg)
		if err != nil || !ans.Stale {
			t.Fatalf("lookup: %+v, %v; want stale", ans, err)
		}
		recv(t, reg.entered, "the background refresh reaching the registry")
		cancel()
		release()
		eventually(t, waitLimit, "the refresh storing its answer", func() bool {
			e := c.local.get(tierKey{service: testService, org: testOrg})
			return e != nil && clock.Now().Before(e.freshUntil)
		})
	})
	t.Run("ends with the cache", func(t *testing.T) {
		life, end := context.WithCancel(context.Background())
		defer end()
		c, reg, _ := failingWithStale(t, MembershipCacheOptions{Context: life})
		reg.set(nil)
		release := reg.hold() // never released while the refresh runs
		defer release()
		if ans := lookup(t, c, testService, testOrg); !ans.Stale {
			t.Fatalf("lookup: %+v, want stale", ans)
		}
		recv(t, reg.entered, "the background refresh reaching the registry")
		end()
		eventually(t, waitLimit, "the refresh ending", func() bool {
			n := 0
			c.refreshing.Range(func(any, any) bool { n++; return true })
			return n == 0
		})
		if !c.failing.Load() {
			t.Fatal("a refresh ended by the cache's end counted as the registry working")
		}
		// No refresh starts once the cache has ended.
		drain(reg)
		lookup(t, c, testService, testOrg)
		expectCalls(t, reg, 3)
	})
}

// A registry refusing our credentials is never masked: the background
// refresh that meets it marks the registry as answering, and the next lookup
// asks it and gets the configuration error.
func TestMembershipRefreshMeetsConfigError(t *testing.T) {
	c, reg, _ := failingWithStale(t, MembershipCacheOptions{})
	reg.fail(fmt.Errorf("%w: 401", authz.ErrRegistryConfig))
	if ans := lookup(t, c, testService, testOrg); !ans.Stale {
		t.Fatalf("lookup: %+v, want stale", ans)
	}
	eventually(t, waitLimit, "the refresh meeting the 401", func() bool { return !c.failing.Load() })
	if _, err := c.Lookup(context.Background(), testService, testOrg); !errors.Is(err, authz.ErrRegistryConfig) {
		t.Fatalf("after the refresh met a 401: %v, want ErrRegistryConfig", err)
	}
}

// A replica that holds nothing in-process serves the Redis tier's last-known
// answer at once while the registry is failing, and keeps it in-process.
func TestMembershipRedisStaleWhileFailing(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	a := newReplica(t, prefix, clock, MembershipCacheOptions{})
	b := newReplica(t, prefix, clock, MembershipCacheOptions{})
	fetched := lookup(t, a.c, testService, testOrg).FetchedAt
	clock.Advance(DefaultMembershipPositiveTTL)
	b.reg.fail(errRegistryDown)
	// B learns that the registry fails on another organization.
	if _, err := b.c.Lookup(context.Background(), testService, otherOrg); !errors.Is(err, authz.ErrRegistryUnavailable) {
		t.Fatalf("unknown org, registry failing: %v", err)
	}
	drain(b.reg)
	release := b.reg.hold()
	defer release()

	ch := goLookup(t, b.c, testService, testOrg)
	ans := recv(t, ch, "B's lookup, the registry hanging")
	if !ans.Stale || ans.Source != TierRedis || !ans.FetchedAt.Equal(fetched) || ans.Record == nil {
		t.Fatalf("B's answer %+v, want A's stale answer from Redis", ans)
	}
	recv(t, b.reg.entered, "B's background refresh reaching the registry")
	if ans := lookup(t, b.c, testService, testOrg); !ans.Stale || ans.Source != TierLocal {
		t.Fatalf("B's second answer %+v, want it stale from the in-process tier", ans)
	}
	expectCalls(t, b.reg, 2) // the other org, one refresh
}
