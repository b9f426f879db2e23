package cache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
)

const ttl = 20 * time.Second

// step is one FirstUse and what it must answer.
type step struct {
	advance time.Duration // move the clock first
	key     string
	fresh   bool
	err     error
}

func TestLocalReplay(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		steps []step
	}{
		{"fresh then replay", 10, []step{
			{key: "a", fresh: true},
			{key: "a", fresh: false},
			{key: "b", fresh: true},
		}},
		{"live until the ttl ends", 10, []step{
			{key: "a", fresh: true},
			{advance: ttl - time.Nanosecond, key: "a", fresh: false},
			{advance: time.Nanosecond, key: "a", fresh: true},
			{advance: ttl - time.Millisecond, key: "a", fresh: false},
		}},
		{"full of live entries refuses", 2, []step{
			{key: "a", fresh: true},
			{advance: time.Second, key: "b", fresh: true},
			{key: "c", err: ErrReplayStoreFull},
			{key: "a", fresh: false}, // still remembered
			{key: "b", fresh: false},
		}},
		{"full accepts once an entry expires", 2, []step{
			{key: "a", fresh: true},
			{advance: time.Second, key: "b", fresh: true},
			{advance: ttl - time.Second - 1, key: "c", err: ErrReplayStoreFull},
			{advance: 1, key: "c", fresh: true}, // a expired and was swept
			{key: "b", fresh: false},
			{key: "d", err: ErrReplayStoreFull},
			{advance: time.Second, key: "d", fresh: true},
			{key: "c", fresh: false},
		}},
		{"an expired key is reused when full", 1, []step{
			{key: "a", fresh: true},
			{advance: ttl, key: "a", fresh: true},
			{key: "a", fresh: false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			s := NewLocalReplay(tt.max, clock)
			for i, st := range tt.steps {
				clock.Advance(st.advance)
				fresh, err := s.FirstUse(t.Context(), st.key, time.Now(), ttl)
				if fresh != st.fresh || !errors.Is(err, st.err) {
					t.Fatalf("step %d: FirstUse(%q) = %v, %v; want %v, %v", i, st.key, fresh, err, st.fresh, st.err)
				}
			}
			if n := s.Len(); n > tt.max {
				t.Errorf("Len() = %d, above the bound %d", n, tt.max)
			}
		})
	}
}

func TestLocalReplayBadTTL(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second, time.Microsecond} {
		t.Run(d.String(), func(t *testing.T) {
			if _, err := NewLocalReplay(10, newFakeClock()).FirstUse(t.Context(), "a", time.Now(), d); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestLocalReplayBoundWithShards(t *testing.T) {
	const max = 10_000
	clock := newFakeClock()
	s := NewLocalReplay(max, clock)
	if s.entries.Shards() < 2 {
		t.Fatalf("%d shards, want several", s.entries.Shards())
	}
	accepted := 0
	for i := range 2 * max {
		fresh, err := s.FirstUse(t.Context(), strconv.Itoa(i), time.Now(), ttl)
		switch {
		case fresh:
			accepted++
		case !errors.Is(err, ErrReplayStoreFull):
			t.Fatalf("key %d: %v, %v", i, fresh, err)
		}
	}
	// Shards fill unevenly, so a few refuse before the whole store is full.
	if accepted > max || accepted < max*9/10 {
		t.Errorf("accepted %d keys, want at most %d and close to it", accepted, max)
	}
	clock.Advance(ttl)
	if fresh, err := s.FirstUse(t.Context(), "after", time.Now(), ttl); !fresh || err != nil {
		t.Errorf("after expiry: %v, %v", fresh, err)
	}
}

func TestRedisReplay(t *testing.T) {
	c := testRedis(t)
	hook := &argsHook{}
	c.AddHook(hook)
	prefix := testPrefix(t, c)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: prefix, Breaker: NewBreaker("redis")})

	tests := []struct {
		name string
		key  string
		ttl  time.Duration
		want bool
	}{
		{"fresh", "jkt:jti-1", ttl, true},
		{"replay", "jkt:jti-1", ttl, false},
		{"another key", "jkt:jti-2", 1500 * time.Millisecond, true},
		{"sub-millisecond part rounds up", "jkt:jti-3", 1500*time.Millisecond + time.Microsecond, true},
	}
	values := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fresh, err := s.FirstUse(t.Context(), tt.key, time.Now(), tt.ttl)
			if err != nil || fresh != tt.want {
				t.Fatalf("FirstUse = %v, %v; want %v", fresh, err, tt.want)
			}
			// One SET … <value> PX … NX, also for a whole number of seconds
			// (go-redis SetNX would send EX there), with a value of this
			// call's own; then the epoch marker read, in the same batch.
			ms := int64((tt.ttl + time.Millisecond - 1) / time.Millisecond)
			got := hook.lastNamed("set")
			want := fmt.Sprint([]any{"set", prefix + "v1:dpop:" + tt.key, "<value>", "px", ms, "nx"})
			if len(got) != 6 {
				t.Fatalf("sent %v, want %s", got, want)
			}
			val, _ := got[2].(string)
			got[2] = "<value>"
			if fmt.Sprint(got) != want {
				t.Errorf("sent %v, want %s", got, want)
			}
			if val == "" || values[val] {
				t.Errorf("value %q is empty or was sent before", val)
			}
			values[val] = true
			pipe := hook.lastPipe()
			if last := fmt.Sprint(pipe[len(pipe)-1]); last != fmt.Sprint([]any{"get", prefix + "v1:epoch"}) {
				t.Errorf("the batch %v does not end with the epoch marker read", pipe)
			}
			if !tt.want {
				return
			}
			pttl, err := c.PTTL(t.Context(), prefix+"v1:dpop:"+tt.key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if pttl <= 0 || pttl > time.Duration(ms)*time.Millisecond {
				t.Errorf("PTTL %s, want in (0, %dms]", pttl, ms)
			}
		})
	}
}

func TestRedisReplayBadTTL(t *testing.T) {
	c := testRedis(t)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c)})
	if _, err := s.FirstUse(t.Context(), "a", time.Now(), 0); err == nil {
		t.Error("no error")
	}
}

func TestRedisReplayDown(t *testing.T) {
	br := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
	s := NewRedisReplay(deadRedis(t), RedisReplayOptions{Prefix: "helsegate-test:", Breaker: br})
	for i := range BreakerFailures {
		if br.State() != "closed" {
			t.Fatalf("call %d: breaker %s before %d failures", i, br.State(), BreakerFailures)
		}
		fresh, err := s.FirstUse(t.Context(), "k", time.Now(), ttl)
		if fresh || err == nil || errors.Is(err, ErrBreakerOpen) {
			t.Fatalf("call %d: FirstUse = %v, %v; want the connection error", i, fresh, err)
		}
	}
	if br.State() != "open" {
		t.Fatalf("breaker %s after %d failures, want open", br.State(), BreakerFailures)
	}
	fresh, err := s.FirstUse(t.Context(), "k", time.Now(), ttl)
	if fresh || !errors.Is(err, ErrBreakerOpen) {
		t.Errorf("open breaker: FirstUse = %v, %v; want ErrBreakerOpen", fresh, err)
	}
}

// sharedFake is a shared store for TieredReplay tests: it answers what it is
// told and counts its calls.
type sharedFake struct {
	fresh bool
	err   error
	calls int
}

func (f *sharedFake) FirstUse(context.Context, string, time.Time, time.Duration) (bool, error) {
	f.calls++
	return f.fresh, f.err
}

func TestTieredReplay(t *testing.T) {
	clock := newFakeClock()
	now := clock.Now()
	down := &StoreFailure{Floor: now.Add(-time.Second), Err: errDown}
	downSince := &StoreFailure{Floor: now.Add(time.Second), Err: errDown}
	recovering := fmt.Errorf("store: %w", authz.ErrStoreRecovering)
	tests := []struct {
		name      string
		shared    sharedFake
		mode      string
		cancelled bool
		fresh     bool
		errs      []error // all must be in the error
		fallbacks int
	}{
		{name: "shared fresh", shared: sharedFake{fresh: true}, mode: FallbackLocal, fresh: true},
		{name: "shared replay", shared: sharedFake{}, mode: FallbackLocal},
		{name: "shared down, local fresh", shared: sharedFake{err: down}, mode: FallbackLocal, fresh: true, fallbacks: 1},
		{name: "empty mode is local", shared: sharedFake{err: down}, mode: "", fresh: true, fallbacks: 1},
		{name: "shared down, proof from before the outage", shared: sharedFake{err: downSince}, mode: FallbackLocal, errs: []error{authz.ErrStoreRecovering, errDown}},
		{name: "shared failed, not saying since when", shared: sharedFake{err: errDown}, mode: FallbackLocal, errs: []error{errDown}},
		{name: "deny", shared: sharedFake{err: down}, mode: FallbackDeny, errs: []error{errDown}},
		{name: "recovering, local", shared: sharedFake{err: recovering}, mode: FallbackLocal, errs: []error{authz.ErrStoreRecovering}},
		{name: "recovering, deny", shared: sharedFake{err: recovering}, mode: FallbackDeny, errs: []error{authz.ErrStoreRecovering}},
		{name: "caller gone", shared: sharedFake{err: context.Canceled}, mode: FallbackLocal, cancelled: true, errs: []error{context.Canceled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fallbacks := 0
			shared := tt.shared
			f, err := NewTieredReplay(NewLocalReplay(100, clock), &shared, tt.mode, func(err error) {
				fallbacks++
				if !errors.Is(err, errDown) {
					t.Errorf("onFallback(%v)", err)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			if tt.cancelled {
				cancel()
			}
			defer cancel()
			fresh, err := f.FirstUse(ctx, "k", now, ttl)
			if fresh != tt.fresh || (err != nil) != (len(tt.errs) > 0) {
				t.Errorf("FirstUse = %v, %v; want %v, %v", fresh, err, tt.fresh, tt.errs)
			}
			for _, e := range tt.errs {
				if !errors.Is(err, e) {
					t.Errorf("error %v is not %v", err, e)
				}
			}
			if fallbacks != tt.fallbacks {
				t.Errorf("%d fallbacks, want %d", fallbacks, tt.fallbacks)
			}
			// The in-process tier recorded the proof on every path: used
			// again, it is a replay, even with a shared store that would
			// call it fresh, and the shared store is not asked.
			shared = sharedFake{fresh: true}
			if fresh, err := f.FirstUse(t.Context(), "k", now, ttl); fresh || err != nil {
				t.Errorf("the proof used again: FirstUse = %v, %v; want a replay", fresh, err)
			}
			if shared.calls != 0 {
				t.Errorf("the shared store was asked about a proof the local tier holds")
			}
		})
	}
}

// TestTieredReplayLocalFull: a full in-process tier refuses before Redis is
// asked: a proof it cannot record is never accepted.
func TestTieredReplayLocalFull(t *testing.T) {
	clock := newFakeClock()
	shared := &sharedFake{fresh: true}
	f, err := NewTieredReplay(NewLocalReplay(1, clock), shared, FallbackLocal, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fresh, err := f.FirstUse(t.Context(), "a", clock.Now(), ttl); !fresh || err != nil {
		t.Fatalf("first proof: %v %v", fresh, err)
	}
	if _, err := f.FirstUse(t.Context(), "b", clock.Now(), ttl); !errors.Is(err, ErrReplayStoreFull) {
		t.Fatalf("second proof with the local tier full: %v, want ErrReplayStoreFull", err)
	}
	if shared.calls != 1 {
		t.Errorf("%d shared calls, want 1", shared.calls)
	}
}

func TestNewTieredReplayErrors(t *testing.T) {
	local := NewLocalReplay(10, nil)
	tests := []struct {
		name   string
		local  *LocalReplay
		shared authz.ReplayStore
		mode   string
	}{
		{"unknown mode", local, &sharedFake{}, "allow"},
		{"no local", nil, &sharedFake{}, FallbackLocal},
		{"no shared", local, nil, FallbackDeny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewTieredReplay(tt.local, tt.shared, tt.mode, nil); err == nil {
				t.Error("no error")
			}
		})
	}
}

// TestTieredReplayWithRedisDown: with Redis refusing connections, local
// answers for proofs issued after the failures began (plus the skew), deny
// refuses; both never accept the same proof twice.
func TestTieredReplayWithRedisDown(t *testing.T) {
	tests := []struct {
		mode  string
		fresh []bool // first use, then replay
		err   bool
	}{
		{FallbackLocal, []bool{true, false}, false},
		{FallbackDeny, []bool{false, false}, true},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			br := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
			shared := NewRedisReplay(deadRedis(t), RedisReplayOptions{Prefix: "helsegate-test:", Breaker: br, FutureSkew: time.Second})
			f, err := NewTieredReplay(NewLocalReplay(100, nil), shared, tt.mode, nil)
			if err != nil {
				t.Fatal(err)
			}
			// A proof issued before the failures began (they begin now):
			// another replica may have accepted it through Redis.
			if fresh, err := f.FirstUse(t.Context(), "old", time.Now().Add(-time.Second), ttl); fresh || err == nil {
				t.Errorf("a proof from before the outage: FirstUse = %v, %v; want an error", fresh, err)
			} else if tt.mode == FallbackLocal && !errors.Is(err, authz.ErrStoreRecovering) {
				t.Errorf("a proof from before the outage: %v, want ErrStoreRecovering", err)
			}
			iat := time.Now().Add(2 * time.Second) // after the failures began, plus the skew
			for i, want := range tt.fresh {
				fresh, err := f.FirstUse(t.Context(), "jkt:jti", iat, ttl)
				if fresh != want || (i == 0 && (err != nil) != tt.err) {
					t.Errorf("use %d: FirstUse = %v, %v; want %v, error %v", i, fresh, err, want, tt.err)
				}
			}
		})
	}
}

func TestReplayConcurrentFirstUse(t *testing.T) {
	c := testRedis(t)
	stores := []struct {
		name  string
		store authz.ReplayStore
	}{
		{"local", NewLocalReplay(100, newFakeClock())},
		{"redis", NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c), Breaker: NewBreaker("redis"), Timeout: time.Second})},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			const n = 50
			var (
				wg    sync.WaitGroup
				fresh atomic.Int32
				start = make(chan struct{})
			)
			for range n {
				wg.Go(func() {
					<-start
					ok, err := st.store.FirstUse(t.Context(), "jkt:same-jti", time.Now(), ttl)
					if err != nil {
						t.Error(err)
					}
					if ok {
						fresh.Add(1)
					}
				})
			}
			close(start)
			wg.Wait()
			if got := fresh.Load(); got != 1 {
				t.Errorf("%d of %d concurrent uses were fresh, want exactly 1", got, n)
			}
		})
	}
}

// BenchmarkLocalReplay measures FirstUse of fresh keys: every key comes back
// only after its entry expired, so each call writes.
func BenchmarkLocalReplay(b *testing.B) {
	const keys = 1 << 16
	b.Run("serial", func(b *testing.B) {
		clock := &benchClock{}
		s := NewLocalReplay(keys, clock)
		names := benchKeys("k", keys)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			clock.ns.Add(1000)
			if _, err := s.FirstUse(context.Background(), names[i%keys], time.Now(), 10*time.Millisecond); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		// Each goroutine has its own keys; the wall clock and a 1ms ttl
		// make a key expire long before it comes round again.
		procs := runtime.GOMAXPROCS(0)
		s := NewLocalReplay(procs*keys, authz.SystemClock)
		var id atomic.Int32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			names := benchKeys(strconv.Itoa(int(id.Add(1))), keys)
			i := 0
			for pb.Next() {
				if _, err := s.FirstUse(context.Background(), names[i%keys], time.Now(), time.Millisecond); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkRedisReplay measures one SET NX PX round trip per FirstUse.
func BenchmarkRedisReplay(b *testing.B) {
	c := testRedis(b)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(b, c), Breaker: NewBreaker("redis")})
	var n atomic.Int64
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.FirstUse(context.Background(), strconv.FormatInt(n.Add(1), 10), time.Now(), 10*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.FirstUse(context.Background(), strconv.FormatInt(n.Add(1), 10), time.Now(), 10*time.Second); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// benchClock is a clock moved by the benchmark.
type benchClock struct{ ns atomic.Int64 }

func (c *benchClock) Now() time.Time { return time.Unix(0, c.ns.Load()) }

func benchKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + ":jti-" + strconv.Itoa(i)
	}
	return keys
}

var _ redis.Hook = (*argsHook)(nil)
