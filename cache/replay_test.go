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
				fresh, err := s.FirstUse(t.Context(), st.key, ttl)
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
			if _, err := NewLocalReplay(10, newFakeClock()).FirstUse(t.Context(), "a", d); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestLocalReplayBoundWithShards(t *testing.T) {
	const max = 10_000
	clock := newFakeClock()
	s := NewLocalReplay(max, clock)
	if len(s.shards) < 2 {
		t.Fatalf("%d shards, want several", len(s.shards))
	}
	accepted := 0
	for i := range 2 * max {
		fresh, err := s.FirstUse(t.Context(), strconv.Itoa(i), ttl)
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
	if fresh, err := s.FirstUse(t.Context(), "after", ttl); !fresh || err != nil {
		t.Errorf("after expiry: %v, %v", fresh, err)
	}
}

func TestRedisReplay(t *testing.T) {
	c := testRedis(t)
	hook := &argsHook{}
	c.AddHook(hook)
	prefix := testPrefix(t, c)
	s := NewRedisReplay(c, prefix, NewBreaker("redis"), 0)

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
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fresh, err := s.FirstUse(t.Context(), tt.key, tt.ttl)
			if err != nil || fresh != tt.want {
				t.Fatalf("FirstUse = %v, %v; want %v", fresh, err, tt.want)
			}
			// One SET … PX … NX, also for a whole number of seconds
			// (go-redis SetNX would send EX there).
			ms := int64((tt.ttl + time.Millisecond - 1) / time.Millisecond)
			want := fmt.Sprint([]any{"set", prefix + "v1:dpop:" + tt.key, "1", "px", ms, "nx"})
			if got := fmt.Sprint(hook.last()); got != want {
				t.Errorf("sent %s, want %s", got, want)
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
	s := NewRedisReplay(c, testPrefix(t, c), nil, 0)
	if _, err := s.FirstUse(t.Context(), "a", 0); err == nil {
		t.Error("no error")
	}
}

func TestRedisReplayDown(t *testing.T) {
	br := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
	s := NewRedisReplay(deadRedis(t), "helsegate-test:", br, 0)
	for i := range BreakerFailures {
		if br.State() != "closed" {
			t.Fatalf("call %d: breaker %s before %d failures", i, br.State(), BreakerFailures)
		}
		fresh, err := s.FirstUse(t.Context(), "k", ttl)
		if fresh || err == nil || errors.Is(err, ErrBreakerOpen) {
			t.Fatalf("call %d: FirstUse = %v, %v; want the connection error", i, fresh, err)
		}
	}
	if br.State() != "open" {
		t.Fatalf("breaker %s after %d failures, want open", br.State(), BreakerFailures)
	}
	fresh, err := s.FirstUse(t.Context(), "k", ttl)
	if fresh || !errors.Is(err, ErrBreakerOpen) {
		t.Errorf("open breaker: FirstUse = %v, %v; want ErrBreakerOpen", fresh, err)
	}
}

// storeFunc adapts a function to authz.ReplayStore.
type storeFunc func(ctx context.Context, key string, ttl time.Duration) (bool, error)

func (f storeFunc) FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	return f(ctx, key, ttl)
}

func answer(fresh bool, err error) storeFunc {
	return func(context.Context, string, time.Duration) (bool, error) { return fresh, err }
}

func TestFallbackReplay(t *testing.T) {
	tests := []struct {
		name      string
		primary   storeFunc
		local     storeFunc
		mode      string
		cancelled bool
		fresh     bool
		errs      []error // all must be in the error
		fallbacks int
	}{
		{name: "primary fresh", primary: answer(true, nil), local: answer(false, errDown), mode: FallbackLocal, fresh: true},
		{name: "primary replay", primary: answer(false, nil), local: answer(true, nil), mode: FallbackLocal, fresh: false},
		{name: "primary down, local fresh", primary: answer(false, errDown), local: answer(true, nil), mode: FallbackLocal, fresh: true, fallbacks: 1},
		{name: "primary down, local replay", primary: answer(false, errDown), local: answer(false, nil), mode: FallbackLocal, fresh: false, fallbacks: 1},
		{name: "empty mode is local", primary: answer(false, errDown), local: answer(true, nil), mode: "", fresh: true, fallbacks: 1},
		{name: "primary down, local full", primary: answer(false, errDown), local: answer(false, ErrReplayStoreFull), mode: FallbackLocal, errs: []error{errDown, ErrReplayStoreFull}, fallbacks: 1},
		{name: "deny", primary: answer(false, errDown), local: answer(true, nil), mode: FallbackDeny, errs: []error{errDown}},
		{name: "deny without local", primary: answer(false, errDown), mode: FallbackDeny, errs: []error{errDown}},
		{name: "caller gone", primary: answer(false, context.Canceled), local: answer(true, nil), mode: FallbackLocal, cancelled: true, errs: []error{context.Canceled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var local authz.ReplayStore
			if tt.local != nil {
				local = tt.local
			}
			fallbacks := 0
			f, err := NewFallbackReplay(tt.primary, local, tt.mode, func(err error) {
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
			fresh, err := f.FirstUse(ctx, "k", ttl)
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
		})
	}
}

func TestNewFallbackReplayErrors(t *testing.T) {
	tests := []struct {
		name           string
		primary, local authz.ReplayStore
		mode           string
	}{
		{"unknown mode", answer(true, nil), answer(true, nil), "allow"},
		{"local mode without local", answer(true, nil), nil, FallbackLocal},
		{"no primary", nil, answer(true, nil), FallbackDeny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewFallbackReplay(tt.primary, tt.local, tt.mode, nil); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestFallbackReplayWithRedisDown(t *testing.T) {
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
			primary := NewRedisReplay(deadRedis(t), "helsegate-test:", br, 0)
			f, err := NewFallbackReplay(primary, NewLocalReplay(100, newFakeClock()), tt.mode, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tt.fresh {
				fresh, err := f.FirstUse(t.Context(), "jkt:jti", ttl)
				if fresh != want || (err != nil) != tt.err {
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
		{"redis", NewRedisReplay(c, testPrefix(t, c), NewBreaker("redis"), time.Second)},
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
					ok, err := st.store.FirstUse(t.Context(), "jkt:same-jti", ttl)
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
			if _, err := s.FirstUse(context.Background(), names[i%keys], 10*time.Millisecond); err != nil {
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
				if _, err := s.FirstUse(context.Background(), names[i%keys], time.Millisecond); err != nil {
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
	s := NewRedisReplay(c, testPrefix(b, c), NewBreaker("redis"), 0)
	var n atomic.Int64
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.FirstUse(context.Background(), strconv.FormatInt(n.Add(1), 10), 10*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.FirstUse(context.Background(), strconv.FormatInt(n.Add(1), 10), 10*time.Second); err != nil {
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
