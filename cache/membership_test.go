package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
)

const (
	testService = "kjernejournal"
	testOrg     = "917897468"
	otherOrg    = "922734046"
)

// fakeRegistry is a counting authz.Membership. By default every org is an
// active member; answer and gate change that.
type fakeRegistry struct {
	clock   authz.Clock
	calls   atomic.Int32
	entered chan struct{} // receives once per call, if there is room

	mu     sync.Mutex
	answer func(service, org string) (*authz.Authorization, error)
	gate   chan struct{} // when set, calls wait for it to close
}

func newFakeRegistry(clock authz.Clock) *fakeRegistry {
	return &fakeRegistry{clock: clock, entered: make(chan struct{}, 1000)}
}

func (f *fakeRegistry) Lookup(ctx context.Context, service, org string) (authz.Answer, error) {
	f.calls.Add(1)
	select {
	case f.entered <- struct{}{}:
	default:
	}
	f.mu.Lock()
	answer, gate := f.answer, f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return authz.Answer{}, fmt.Errorf("%w: %w", authz.ErrRegistryUnavailable, ctx.Err())
		}
	}
	rec, err := member(service, org), error(nil)
	if answer != nil {
		rec, err = answer(service, org)
	}
	if err != nil {
		return authz.Answer{}, err
	}
	return authz.Answer{Record: rec, FetchedAt: f.clock.Now(), Source: "registry"}, nil
}

// set makes the registry answer with fn from now on.
func (f *fakeRegistry) set(fn func(service, org string) (*authz.Authorization, error)) {
	f.mu.Lock()
	f.answer = fn
	f.mu.Unlock()
}

// fail makes every call fail with err.
func (f *fakeRegistry) fail(err error) {
	f.set(func(string, string) (*authz.Authorization, error) { return nil, err })
}

// hold makes calls wait until the returned function is called.
func (f *fakeRegistry) hold() (release func()) {
	gate := make(chan struct{})
	f.mu.Lock()
	f.gate = gate
	f.mu.Unlock()
	return sync.OnceFunc(func() { close(gate) })
}

func member(service, org string) *authz.Authorization {
	return &authz.Authorization{Organization: org, Service: service, Member: true, Status: "active"}
}

// results counts what OnResult is told.
type results struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *results) hook(tier, result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[tier+" "+result]++
}

func (r *results) get(tier, result string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[tier+" "+result]
}

// lookup fails the test on an error.
func lookup(t testing.TB, c *CachedMembership, service, org string) authz.Answer {
	t.Helper()
	ans, err := c.Lookup(context.Background(), service, org)
	if err != nil {
		t.Fatalf("Lookup(%s, %s): %v", service, org, err)
	}
	return ans
}

// goLookup looks up in a goroutine and sends the answer.
func goLookup(t testing.TB, c *CachedMembership, service, org string) <-chan authz.Answer {
	ch := make(chan authz.Answer, 1)
	go func() {
		ans, err := c.Lookup(context.Background(), service, org)
		if err != nil {
			t.Errorf("Lookup(%s, %s): %v", service, org, err)
		}
		ch <- ans
	}()
	return ch
}

// expectCalls checks how many times reg was called.
func expectCalls(t testing.TB, reg *fakeRegistry, want int) {
	t.Helper()
	if got := int(reg.calls.Load()); got != want {
		t.Fatalf("registry called %d times, want %d", got, want)
	}
}

func TestMembershipPositiveTTL(t *testing.T) {
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	var res results
	c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock, OnResult: res.hook})

	first := lookup(t, c, testService, testOrg)
	if first.Source != "registry" || first.Stale || first.Record == nil || !first.FetchedAt.Equal(clock.Now()) {
		t.Fatalf("first answer %+v", first)
	}
	expectCalls(t, reg, 1)

	clock.Advance(DefaultMembershipPositiveTTL - time.Second)
	ans := lookup(t, c, testService, testOrg)
	if ans.Source != "local" || ans.Stale || !ans.FetchedAt.Equal(first.FetchedAt) || ans.Record != first.Record {
		t.Fatalf("answer within the TTL %+v", ans)
	}
	expectCalls(t, reg, 1)

	clock.Advance(time.Second)
	if ans := lookup(t, c, testService, testOrg); ans.Source != "registry" {
		t.Fatalf("answer at the TTL came from %s", ans.Source)
	}
	expectCalls(t, reg, 2)

	if lookup(t, c, testService, otherOrg); reg.calls.Load() != 3 {
		t.Fatal("another org was answered from the cache")
	}
	for _, want := range []struct {
		tier, result string
		n            int
	}{
		{"local", "hit", 1},
		{"local", "miss", 3},
		{"registry", "hit", 3},
		{"redis", "miss", 0},
	} {
		if got := res.get(want.tier, want.result); got != want.n {
			t.Errorf("OnResult(%s, %s) %d times, want %d", want.tier, want.result, got, want.n)
		}
	}
}

func TestMembershipNegativeTTL(t *testing.T) {
	past := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	future := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		rec  func() *authz.Authorization
	}{
		{"no record", func() *authz.Authorization { return nil }},
		{"not a member", func() *authz.Authorization {
			r := member(testService, testOrg)
			r.Member = false
			return r
		}},
		{"suspended", func() *authz.Authorization {
			r := member(testService, testOrg)
			r.Status = "suspended"
			return r
		}},
		{"expired", func() *authz.Authorization {
			r := member(testService, testOrg)
			r.ValidTo = &past
			return r
		}},
		{"not yet valid", func() *authz.Authorization {
			r := member(testService, testOrg)
			r.ValidFrom = &future
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			reg := newFakeRegistry(clock)
			reg.set(func(string, string) (*authz.Authorization, error) { return tc.rec(), nil })
			c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock, NegativeTTL: 30 * time.Second})

			lookup(t, c, testService, testOrg)
			clock.Advance(29 * time.Second)
			if ans := lookup(t, c, testService, testOrg); ans.Source != "local" {
				t.Fatalf("within the negative TTL: from %s", ans.Source)
			}
			expectCalls(t, reg, 1)
			clock.Advance(time.Second)
			if ans := lookup(t, c, testService, testOrg); ans.Source != "registry" {
				t.Fatalf("at the negative TTL: from %s", ans.Source)
			}
			expectCalls(t, reg, 2)
		})
	}
}

func TestMembershipStale(t *testing.T) {
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	var res results
	c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock, OnResult: res.hook})
	fetched := lookup(t, c, testService, testOrg).FetchedAt
	reg.fail(fmt.Errorf("%w: 503", authz.ErrRegistryUnavailable))

	for _, age := range []time.Duration{DefaultMembershipPositiveTTL, 30 * time.Minute, DefaultMembershipStaleFor - time.Second} {
		clock.Advance(age - clock.Now().Sub(fetched))
		ans := lookup(t, c, testService, testOrg)
		if !ans.Stale || ans.Source != "local" || !ans.FetchedAt.Equal(fetched) || ans.Record == nil {
			t.Fatalf("at age %s: %+v", age, ans)
		}
	}
	if got := res.get("registry", "stale"); got != 3 {
		t.Fatalf("OnResult(registry, stale) %d times, want 3", got)
	}

	clock.Advance(time.Second) // age StaleFor: too old
	_, err := c.Lookup(context.Background(), testService, testOrg)
	if !errors.Is(err, authz.ErrRegistryUnavailable) {
		t.Fatalf("past StaleFor: %v, want ErrRegistryUnavailable", err)
	}
	if res.get("registry", "error") != 1 {
		t.Fatal("OnResult(registry, error) not told")
	}

	// The registry answers again: fresh, not stale.
	reg.set(nil)
	if ans := lookup(t, c, testService, testOrg); ans.Stale || ans.Source != "registry" {
		t.Fatalf("after recovery: %+v", ans)
	}
}

func TestMembershipNothingKnown(t *testing.T) {
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	reg.fail(fmt.Errorf("%w: timeout", authz.ErrRegistryUnavailable))
	c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock})
	if _, err := c.Lookup(context.Background(), testService, testOrg); !errors.Is(err, authz.ErrRegistryUnavailable) {
		t.Fatalf("got %v, want ErrRegistryUnavailable", err)
	}
	// A failure is not cached.
	reg.set(nil)
	lookup(t, c, testService, testOrg)
	expectCalls(t, reg, 2)
}

func TestMembershipRegistryConfigNotMasked(t *testing.T) {
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock})
	lookup(t, c, testService, testOrg)
	clock.Advance(DefaultMembershipPositiveTTL)
	reg.fail(fmt.Errorf("%w: 401", authz.ErrRegistryConfig))

	// A stale answer is there, but a registry refusing our credentials is
	// our misconfiguration: it must surface.
	ans, err := c.Lookup(context.Background(), testService, testOrg)
	if !errors.Is(err, authz.ErrRegistryConfig) || ans.Record != nil {
		t.Fatalf("got %+v, %v; want ErrRegistryConfig", ans, err)
	}
}

func TestMembershipSingleflight(t *testing.T) {
	const n = 100
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	release := reg.hold()
	defer release()
	var misses atomic.Int32
	allMissed := make(chan struct{})
	c := NewCachedMembership(reg, MembershipCacheOptions{
		Clock: clock,
		OnResult: func(tier, result string) {
			if tier == TierLocal && result == ResultMiss && misses.Add(1) == n {
				close(allMissed)
			}
		},
	})

	var wg sync.WaitGroup
	answers := make(chan authz.Answer, n)
	for range n {
		wg.Go(func() {
			ans, err := c.Lookup(context.Background(), testService, testOrg)
			if err != nil {
				t.Error(err)
			}
			answers <- ans
		})
	}
	select {
	case <-allMissed: // every caller is on its way to the one flight
	case <-time.After(5 * time.Second):
		t.Fatal("the callers did not all miss")
	}
	release()
	wg.Wait()
	close(answers)
	expectCalls(t, reg, 1)
	for ans := range answers {
		if ans.Record == nil || ans.Record.Organization != testOrg {
			t.Fatalf("answer %+v", ans)
		}
	}
}

func TestMembershipCallerGone(t *testing.T) {
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	release := reg.hold()
	defer release()
	c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := c.Lookup(ctx, testService, testOrg)
		done <- err
	}()
	<-reg.entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !errors.Is(err, authz.ErrRegistryUnavailable) {
		t.Fatalf("caller gone: %v", err)
	}

	// The registry call goes on for whoever else waits, and is kept.
	waiter := goLookup(t, c, testService, testOrg)
	release()
	if ans := <-waiter; ans.Record == nil {
		t.Fatalf("waiter got %+v", ans)
	}
	if ans := lookup(t, c, testService, testOrg); ans.Source != "local" {
		t.Fatalf("after the shared call: from %s", ans.Source)
	}
	expectCalls(t, reg, 1)
}

func TestMembershipInvalidateDuringFill(t *testing.T) {
	clock := newFakeClock()
	reg := newFakeRegistry(clock)
	release := reg.hold()
	defer release()
	c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock})

	got := goLookup(t, c, testService, testOrg)
	<-reg.entered
	c.Invalidate(context.Background(), testService, testOrg) // the answer on its way may predate this
	release()
	if ans := <-got; ans.Record == nil {
		t.Fatalf("the caller got %+v", ans)
	}
	if c.Len() != 0 {
		t.Fatal("a fill begun before an invalidation stored its answer")
	}
	reg.mu.Lock()
	reg.gate = nil
	reg.mu.Unlock()
	lookup(t, c, testService, testOrg)
	expectCalls(t, reg, 2)
}

func TestMembershipInvalidateLocal(t *testing.T) {
	const svc2 = "persontjenesten"
	all := []tierKey{{testService, testOrg}, {testService, otherOrg}, {svc2, testOrg}, {svc2, otherOrg}}
	for _, tc := range []struct {
		name, service, org string
		gone               []tierKey
	}{
		{"pair", testService, testOrg, all[:1]},
		{"service", testService, "", all[:2]},
		{"organization", "", testOrg, []tierKey{all[0], all[2]}},
		{"all", "", "", all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			c := NewCachedMembership(newFakeRegistry(clock), MembershipCacheOptions{Clock: clock})
			for _, k := range all {
				lookup(t, c, k.service, k.org)
			}
			c.Invalidate(context.Background(), tc.service, tc.org)
			for _, k := range all {
				gone := false
				for _, g := range tc.gone {
					gone = gone || g == k
				}
				if held := c.local.get(k) != nil; held == gone {
					t.Errorf("%v: held %v, want %v", k, held, !gone)
				}
			}
		})
	}
}

func TestMembershipLocalBound(t *testing.T) {
	t.Run("full of live entries drops one", func(t *testing.T) {
		clock := newFakeClock()
		reg := newFakeRegistry(clock)
		c := NewCachedMembership(reg, MembershipCacheOptions{Clock: clock, LocalMax: 10})
		for i := range 50 {
			org := fmt.Sprintf("%09d", i)
			if ans := lookup(t, c, testService, org); ans.Record.Organization != org {
				t.Fatalf("org %s answered with %+v", org, ans.Record)
			}
			if c.Len() > 10 {
				t.Fatalf("%d entries held, bound 10", c.Len())
			}
		}
		if c.Len() != 10 {
			t.Fatalf("%d entries held, want 10", c.Len())
		}
		// The last one is always kept.
		if ans := lookup(t, c, testService, fmt.Sprintf("%09d", 49)); ans.Source != "local" {
			t.Fatalf("newest entry from %s", ans.Source)
		}
	})
	t.Run("expired entries go first", func(t *testing.T) {
		clock := newFakeClock()
		c := NewCachedMembership(newFakeRegistry(clock), MembershipCacheOptions{Clock: clock, LocalMax: 10})
		for i := range 10 {
			lookup(t, c, testService, fmt.Sprintf("%09d", i))
		}
		clock.Advance(DefaultMembershipStaleFor)
		lookup(t, c, testService, otherOrg)
		if c.Len() != 1 {
			t.Fatalf("%d entries held, want only the new one", c.Len())
		}
	})
	t.Run("sharded", func(t *testing.T) {
		clock := newFakeClock()
		c := NewCachedMembership(newFakeRegistry(clock), MembershipCacheOptions{Clock: clock, LocalMax: 5000})
		if c.local.entries.Shards() < 2 {
			t.Fatalf("%d shards", c.local.entries.Shards())
		}
		for i := range 20000 {
			lookup(t, c, testService, fmt.Sprintf("%09d", i))
		}
		if c.Len() > 5000 {
			t.Fatalf("%d entries held, bound 5000", c.Len())
		}
	})
}

func TestMembershipLocalHitAllocs(t *testing.T) {
	c := NewCachedMembership(newFakeRegistry(authz.SystemClock), MembershipCacheOptions{})
	ctx := context.Background()
	lookup(t, c, testService, testOrg)
	allocs := testing.AllocsPerRun(1000, func() {
		if ans, err := c.Lookup(ctx, testService, testOrg); err != nil || ans.Source != "local" {
			t.Fatal(ans, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("a local hit allocates %.1f times", allocs)
	}
}

func TestKeyPart(t *testing.T) {
	for in, want := range map[string]string{
		"kjernejournal":   "kjernejournal",
		"a:b":             "a%3Ab",
		"x y%z":           "x%20y%25z",
		"917897468":       "917897468",
		"Person_tj-2.0":   "Person_tj-2.0",
		"æ":               "%C3%A6",
		"":                "",
		"svc:0:917897468": "svc%3A0%3A917897468",
	} {
		if got := keyPart(in); got != want {
			t.Errorf("keyPart(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMembershipFetchTimeout(t *testing.T) {
	for _, tc := range []struct {
		name               string
		registry, rt, want time.Duration
	}{
		{"default registry timeout", 2 * time.Second, 0, 2*time.Second + 4*DefaultMembershipRedisTimeout + time.Second},
		{"at the old fixed bound", 10 * time.Second, 0, 10*time.Second + 4*DefaultMembershipRedisTimeout + time.Second},
		{"long registry timeout", 30 * time.Second, 0, 30*time.Second + 4*DefaultMembershipRedisTimeout + time.Second},
		{"own redis timeout", 2 * time.Second, 250 * time.Millisecond, 2*time.Second + time.Second + time.Second},
		{"no registry timeout", 0, 0, 4*DefaultMembershipRedisTimeout + time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := MembershipFetchTimeout(tc.registry, tc.rt)
			if got != tc.want {
				t.Fatalf("MembershipFetchTimeout(%s, %s) = %s, want %s", tc.registry, tc.rt, got, tc.want)
			}
			// The registry call, with the Redis reads before it and the
			// write after it, fits inside the fill.
			rt := tc.rt
			if rt <= 0 {
				rt = DefaultMembershipRedisTimeout
			}
			if got <= tc.registry+4*rt {
				t.Fatalf("%s leaves no room for a registry call of %s and four Redis calls of %s", got, tc.registry, rt)
			}
		})
	}
	if got := NewCachedMembership(newFakeRegistry(newFakeClock()), MembershipCacheOptions{FetchTimeout: time.Minute}).FetchTimeout(); got != time.Minute {
		t.Fatalf("FetchTimeout() = %s, want the option's 1m", got)
	}
}

// hangingRegistry is a registry source the way registry.HTTP is one: every
// call goes through its breaker with its own timeout, and the registry never
// answers.
type hangingRegistry struct {
	breaker *Breaker
	timeout time.Duration
}

func (h hangingRegistry) Lookup(ctx context.Context, _, _ string) (authz.Answer, error) {
	err := h.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, h.timeout)
		defer cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	return authz.Answer{}, fmt.Errorf("%w: %w", authz.ErrRegistryUnavailable, err)
}

// A registry that hangs opens its breaker when the fill's bound comes from
// MembershipFetchTimeout; with a fill bound below the registry's timeout (as
// the fixed 10s default was below a timeout of 10s or more) every call ends
// as "caller gone" and the breaker never opens.
func TestMembershipHangingRegistryOpensBreaker(t *testing.T) {
	const registryTimeout = 30 * time.Millisecond
	for _, tc := range []struct {
		name      string
		fetch     time.Duration
		wantState BreakerState
	}{
		{"fill bound from the registry timeout", MembershipFetchTimeout(registryTimeout, 0), "open"},
		{"fill bound below the registry timeout", registryTimeout / 2, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := NewBreaker("registry", WithHalfOpenAfter(time.Hour))
			c := NewCachedMembership(hangingRegistry{breaker: br, timeout: registryTimeout},
				MembershipCacheOptions{FetchTimeout: tc.fetch})
			for i := range BreakerFailures {
				_, err := c.Lookup(context.Background(), testService, fmt.Sprintf("org-%d", i))
				if !errors.Is(err, authz.ErrRegistryUnavailable) {
					t.Fatalf("lookup %d: %v", i, err)
				}
			}
			if got := br.State(); got != tc.wantState {
				t.Fatalf("after %d timed-out calls the breaker is %s, want %s", BreakerFailures, got, tc.wantState)
			}
		})
	}
}
