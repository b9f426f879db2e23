package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
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
//
// Calls that arrive while one is waiting for Redis are sent together, as one
// pipeline, when it returns (the requests of a busy gateway then share the
// system calls of a round trip instead of each paying its own). Nothing waits
// to fill a batch: a call on an idle store goes out at once, alone.
type RedisReplay struct {
	client  redis.UniversalClient
	prefix  string
	breaker *Breaker
	timeout time.Duration

	mu      sync.Mutex
	queue   []*replayCall // calls waiting for the next batch
	sending bool          // a batch is out; its sender hands over to queue[0]
}

// replayCall is one FirstUse waiting for its batch.
type replayCall struct {
	cmd   *redis.BoolCmd
	err   error     // the batch's error when its commands never ran (breaker open)
	turn  chan bool // true: send the next batch; false: cmd (or err) has the answer
	state atomic.Int32
}

// States of a replayCall in the queue: a waiting call may be abandoned by
// its caller (its request ended) until a sender hands it the next batch.
const (
	callWaiting int32 = iota
	callHanded
	callAbandoned
)

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
	ms := int64((ttl + time.Millisecond - 1) / time.Millisecond)
	// Built by hand: client.SetNX sends EX, not PX, when ttl is a whole
	// number of seconds. A BoolCmd reads the nil reply of a refused SET NX
	// as false.
	cmd := redis.NewBoolCmd(ctx, "set", r.prefix+"v1:dpop:"+key, "1", "px", ms, "nx")
	if r.breaker.State() != "closed" {
		// Open: fail at once, queueing behind nobody. Half-open: the
		// breaker lets one probe through and refuses the rest at once.
		return r.firstUseAlone(ctx, cmd)
	}
	call := &replayCall{cmd: cmd, turn: make(chan bool, 1)}
	r.mu.Lock()
	r.queue = append(r.queue, call)
	lead := !r.sending
	r.sending = true
	r.mu.Unlock()
	// Wait for the batch in flight: it answers this call (false), or this
	// call sends the next one (true). A caller whose request ends leaves,
	// unless the next batch was handed to it already (then it is on its way).
	if !lead {
		select {
		case lead = <-call.turn:
		case <-ctx.Done():
			if call.state.CompareAndSwap(callWaiting, callAbandoned) {
				return false, fmt.Errorf("cache: redis replay store: %w", ctx.Err())
			}
			lead = <-call.turn
		}
	}
	if lead {
		r.sendBatch(ctx, call)
	}
	err := call.err
	if err == nil {
		var fresh bool
		if fresh, err = call.cmd.Result(); err == nil {
			return fresh, nil
		}
	}
	return false, fmt.Errorf("cache: redis replay store: %w", err)
}

// firstUseAlone sends one SET NX on its own through the breaker.
func (r *RedisReplay) firstUseAlone(ctx context.Context, cmd *redis.BoolCmd) (bool, error) {
	err := r.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		return r.client.Process(ctx, cmd)
	})
	if err == nil {
		var fresh bool
		if fresh, err = cmd.Result(); err == nil {
			return fresh, nil
		}
	}
	return false, fmt.Errorf("cache: redis replay store: %w", err)
}

// maxReplayBatch bounds the calls sent in one pipeline.
const maxReplayBatch = 512

// errBatchAbandoned is the answer of the calls of a batch whose sender
// panicked: they are released with an error rather than left waiting.
var errBatchAbandoned = errors.New("the batch carrying this call was abandoned")

// sendBatch sends the queued calls (own first among them) in one round trip,
// through the breaker, then hands the next batch to the first call queued
// meanwhile, or marks the store idle.
func (r *RedisReplay) sendBatch(ctx context.Context, own *replayCall) {
	r.mu.Lock()
	n := min(len(r.queue), maxReplayBatch)
	batch := make([]*replayCall, 0, n)
	for _, c := range r.queue[:n] {
		if c == own || c.state.Load() != callAbandoned {
			batch = append(batch, c)
		}
	}
	r.queue = append(r.queue[:0], r.queue[n:]...)
	r.mu.Unlock()

	done := false
	defer func() {
		if !done { // a panic: release everyone, then let it go on
			for _, c := range batch {
				c.err = errBatchAbandoned
			}
		}
		r.release(batch, own)
	}()
	ran := false
	err := r.breaker.Do(r.batchContext(ctx, len(batch)), func(ctx context.Context) error {
		ran = true
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		if len(batch) == 1 {
			return r.client.Process(ctx, batch[0].cmd)
		}
		pipe := r.client.Pipeline()
		for _, c := range batch {
			_ = pipe.Process(ctx, c.cmd)
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	var reply redis.Error
	wholeBatch := err != nil && (!ran || !errors.As(err, &reply))
	for _, c := range batch {
		// A command has its own answer, or the error of a batch that never
		// ran (breaker open) or failed as a whole (timeout, connection).
		// A server error reply concerns its own command only.
		if wholeBatch && c.cmd.Err() == nil {
			c.err = err
		}
	}
	done = true
}

// release wakes the callers of a sent batch with their answers, and hands
// the next batch to the first call queued meanwhile, or marks the store idle.
func (r *RedisReplay) release(batch []*replayCall, own *replayCall) {
	for _, c := range batch {
		if c != own {
			c.turn <- false
		}
	}
	r.mu.Lock()
	for len(r.queue) > 0 {
		next := r.queue[0]
		if next.state.CompareAndSwap(callWaiting, callHanded) {
			r.mu.Unlock()
			next.turn <- true
			return
		}
		r.queue = append(r.queue[:0], r.queue[1:]...) // abandoned: its caller left
	}
	r.sending = false
	r.mu.Unlock()
}

// batchContext is the context a batch is sent under: the sender's own for a
// batch of one (its cancellation ends the call, as without batching), and
// for a batch of several the sender's values without its cancellation: the
// other callers' requests must not fail because the sender's went away.
func (r *RedisReplay) batchContext(ctx context.Context, n int) context.Context {
	if n == 1 {
		return ctx
	}
	return context.WithoutCancel(ctx)
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
