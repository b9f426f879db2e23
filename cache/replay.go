package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
)

// DefaultLocalReplayEntries bounds a LocalReplay created with maxEntries <= 0.
// With the default proof window (15 s old + 5 s ahead) it holds 5 000
// proofs a second.
const DefaultLocalReplayEntries = 100_000

// DefaultRedisTimeout bounds one Redis call of a RedisReplay.
const DefaultRedisTimeout = 250 * time.Millisecond

// Fallback modes of NewFallbackReplay (the on_store_error option).
const (
	// FallbackLocal answers from the in-process store while the primary fails.
	FallbackLocal = "local"
	// FallbackDeny returns the primary's error: the request is denied.
	FallbackDeny = "deny"
)

// ErrReplayStoreFull is returned by LocalReplay when it holds maxEntries
// proofs that have not expired yet. The caller denies the request.
var ErrReplayStoreFull = errors.New("cache: local replay store is full of live entries")

// Compile-time checks that the stores implement authz.ReplayStore.
var (
	_ authz.ReplayStore = (*LocalReplay)(nil)
	_ authz.ReplayStore = (*RedisReplay)(nil)
	_ authz.ReplayStore = (*FallbackReplay)(nil)
)

// errBadTTL is returned for a ttl a store cannot keep.
func errBadTTL(ttl time.Duration) error {
	return fmt.Errorf("cache: replay ttl %s is below 1ms", ttl)
}

// LocalReplay is an in-process, bounded replay store whose entries expire by
// an injected clock. It is correct for one instance only: another replica
// does not see its entries.
//
// When full it never forgets a live entry, because a forgotten entry is a
// proof that could be replayed. It first drops expired entries; if every
// entry is still live, FirstUse fails with ErrReplayStoreFull and the caller
// denies: under a flood the store refuses new proofs instead of opening a
// replay window. The store is split into shards, each bounded by its share of
// maxEntries, so a shard can refuse slightly before the whole store is full.
//
// Entries are kept as 128-bit keyed hashes of the key, so the memory per
// entry does not depend on the length of a client-chosen jti. Two keys that
// collide (about 2^-64 for any pair, and the seeds are secret) would only make
// a fresh proof look like a replay, never the other way round.
type LocalReplay struct {
	clock  authz.Clock
	seeds  [2]maphash.Seed
	mask   uint64
	shards []replayShard
}

// replayShard is one lock's worth of entries.
type replayShard struct {
	mu   sync.Mutex
	max  int
	m    map[[2]uint64]time.Time // key hash -> instant the entry expires
	next time.Time               // no entry expires before next; zero when unknown
	_    [80]byte                // pad to 128 bytes: shards do not share cache lines
}

// NewLocalReplay returns an empty LocalReplay that holds at most maxEntries
// live entries (DefaultLocalReplayEntries when maxEntries <= 0) and tells
// time by clock (authz.SystemClock when nil).
func NewLocalReplay(maxEntries int, clock authz.Clock) *LocalReplay {
	if maxEntries <= 0 {
		maxEntries = DefaultLocalReplayEntries
	}
	if clock == nil {
		clock = authz.SystemClock
	}
	// One shard per 1024..2047 entries, at most 64: a small store is exact.
	n := 1
	for n < 64 && maxEntries/(2*n) >= 1024 {
		n *= 2
	}
	s := &LocalReplay{
		clock:  clock,
		seeds:  [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		mask:   uint64(n - 1),
		shards: make([]replayShard, n),
	}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.max = maxEntries / n
		if i < maxEntries%n {
			sh.max++
		}
		sh.m = make(map[[2]uint64]time.Time)
	}
	return s
}

// FirstUse records key until clock.Now()+ttl and reports whether it was not
// already recorded. It fails with ErrReplayStoreFull when the key is new and
// its shard is full of live entries, and for a ttl under 1ms. ctx is unused.
func (s *LocalReplay) FirstUse(_ context.Context, key string, ttl time.Duration) (bool, error) {
	if ttl < time.Millisecond {
		return false, errBadTTL(ttl)
	}
	h := [2]uint64{maphash.String(s.seeds[0], key), maphash.String(s.seeds[1], key)}
	sh := &s.shards[h[0]&s.mask]
	now := s.clock.Now()

	sh.mu.Lock()
	defer sh.mu.Unlock()
	exp, seen := sh.m[h]
	if seen && now.Before(exp) {
		return false, nil // live: a replay
	}
	if !seen && len(sh.m) >= sh.max && !sh.sweep(now) {
		return false, ErrReplayStoreFull
	}
	exp = now.Add(ttl)
	sh.m[h] = exp
	if sh.next.IsZero() || exp.Before(sh.next) {
		sh.next = exp
	}
	return true, nil
}

// Len returns the number of entries held, expired ones not yet swept included.
func (s *LocalReplay) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// sweep deletes the entries expired at now and reports whether any was.
// It costs nothing while no entry can have expired (now before next), so a
// store full of live entries refuses in constant time.
func (sh *replayShard) sweep(now time.Time) bool {
	if now.Before(sh.next) {
		return false
	}
	before := len(sh.m)
	var next time.Time
	for h, exp := range sh.m {
		switch {
		case !now.Before(exp):
			delete(sh.m, h)
		case next.IsZero() || exp.Before(next):
			next = exp
		}
	}
	sh.next = next
	return len(sh.m) < before
}

// RedisReplay is a replay store shared by every replica through Redis. Each
// FirstUse is a single `SET <prefix>v1:dpop:<key> 1 PX <ttl> NX`, atomic on a
// single server, on Sentinel and on Cluster, run through a Breaker so that
// while Redis is down calls fail at once.
type RedisReplay struct {
	client  redis.UniversalClient
	prefix  string
	breaker *Breaker
	timeout time.Duration
}

// NewRedisReplay returns a RedisReplay that writes under prefix (pass
// RedisConfig.Prefix()), through br (nil: no breaker), with timeout per call
// (DefaultRedisTimeout when <= 0). It does no network I/O.
func NewRedisReplay(client redis.UniversalClient, prefix string, br *Breaker, timeout time.Duration) *RedisReplay {
	if timeout <= 0 {
		timeout = DefaultRedisTimeout
	}
	return &RedisReplay{client: client, prefix: prefix, breaker: br, timeout: timeout}
}

// FirstUse records key in Redis for ttl (rounded up to whole milliseconds)
// and reports whether it was not already there. An error means Redis did not
// answer in time, refused, or the breaker is open (errors.Is ErrBreakerOpen).
func (r *RedisReplay) FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if ttl < time.Millisecond {
		return false, errBadTTL(ttl)
	}
	k := r.prefix + "v1:dpop:" + key
	ms := int64((ttl + time.Millisecond - 1) / time.Millisecond)
	var fresh bool
	err := r.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		// Built by hand: client.SetNX sends EX, not PX, when ttl is a whole
		// number of seconds. A BoolCmd reads the nil reply of a refused
		// SET NX as false.
		cmd := redis.NewBoolCmd(ctx, "set", k, "1", "px", ms, "nx")
		_ = r.client.Process(ctx, cmd)
		var err error
		fresh, err = cmd.Result()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("cache: redis replay store: %w", err)
	}
	return fresh, nil
}

// FallbackReplay answers from a primary store (Redis) and, in mode
// FallbackLocal, from an in-process store while the primary fails.
//
// A proof accepted through the local store during an outage is known to this
// instance only: it can be replayed once against each other replica, and a
// proof first used through Redis before the outage can be replayed once here.
// The window is the proof lifetime. FallbackDeny closes it by denying every
// request while Redis is down.
type FallbackReplay struct {
	primary    authz.ReplayStore
	local      authz.ReplayStore
	deny       bool
	onFallback func(error)
}

// NewFallbackReplay returns a FallbackReplay. mode is FallbackLocal (also
// when empty, the SPEC default) or FallbackDeny; local may be nil only with
// FallbackDeny. onFallback, when not nil, is called with the primary's error
// each time the local store answers instead; it runs on the request path and
// under an outage on every request, so it must be cheap (count, rate-limit
// the log).
func NewFallbackReplay(primary, local authz.ReplayStore, mode string, onFallback func(error)) (*FallbackReplay, error) {
	if primary == nil {
		return nil, errors.New("cache: fallback replay store needs a primary store")
	}
	switch mode {
	case FallbackLocal, "":
		if local == nil {
			return nil, errors.New("cache: fallback mode local needs a local store")
		}
	case FallbackDeny:
	default:
		return nil, fmt.Errorf("cache: unknown fallback mode %q (want %s or %s)", mode, FallbackLocal, FallbackDeny)
	}
	return &FallbackReplay{primary: primary, local: local, deny: mode == FallbackDeny, onFallback: onFallback}, nil
}

// FirstUse asks the primary store; when it fails, it returns the error
// (FallbackDeny, or the caller's context is done) or asks the local store.
func (f *FallbackReplay) FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	fresh, err := f.primary.FirstUse(ctx, key, ttl)
	if err == nil || f.deny || ctx.Err() != nil {
		return fresh, err
	}
	if f.onFallback != nil {
		f.onFallback(err)
	}
	fresh, lerr := f.local.FirstUse(ctx, key, ttl)
	if lerr != nil {
		return false, errors.Join(err, lerr)
	}
	return fresh, nil
}
