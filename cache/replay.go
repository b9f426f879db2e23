package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/ttlmap"
)

// DefaultLocalReplayEntries bounds a LocalReplay created with maxEntries <= 0.
// With the default proof window (15 s old + 5 s ahead) it holds 5 000
// proofs a second.
const DefaultLocalReplayEntries = 100_000

// DefaultRedisTimeout bounds one Redis call of a RedisReplay.
const DefaultRedisTimeout = 250 * time.Millisecond

// Modes of NewTieredReplay (the on_store_error option).
const (
	// FallbackLocal answers from the in-process tier while Redis fails.
	FallbackLocal = "local"
	// FallbackDeny returns Redis's error: the request is denied.
	FallbackDeny = "deny"
)

// ErrReplayStoreFull is returned by LocalReplay when it holds maxEntries
// proofs that have not expired yet. The caller denies the request.
var ErrReplayStoreFull = errors.New("cache: local replay store is full of live entries")

// Compile-time checks that the stores implement authz.ReplayStore.
var (
	_ authz.ReplayStore = (*LocalReplay)(nil)
	_ authz.ReplayStore = (*RedisReplay)(nil)
	_ authz.ReplayStore = (*TieredReplay)(nil)
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
	clock   authz.Clock
	seeds   [2]maphash.Seed
	entries *ttlmap.Map[[2]uint64, struct{}] // key hashes, each until it expires
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
	return &LocalReplay{
		clock:   clock,
		seeds:   [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		entries: ttlmap.New[[2]uint64, struct{}](ttlmap.Options{Max: maxEntries, Full: ttlmap.Refuse, WriteMostly: true}),
	}
}

// FirstUse records key until clock.Now()+ttl and reports whether it was not
// already recorded. It fails with ErrReplayStoreFull when the key is new and
// its shard is full of live entries, and for a ttl under 1ms. ctx and the
// proof's issue time are unused: this store forgets nothing it should keep.
func (s *LocalReplay) FirstUse(_ context.Context, key string, _ time.Time, ttl time.Duration) (bool, error) {
	if ttl < time.Millisecond {
		return false, errBadTTL(ttl)
	}
	h := [2]uint64{maphash.String(s.seeds[0], key), maphash.String(s.seeds[1], key)}
	now := s.clock.Now()
	// The key is a hash already: its first half picks the shard.
	added, full := s.entries.Shard(h[0]).Add(h, struct{}{}, now.Add(ttl), now)
	if full {
		return false, ErrReplayStoreFull
	}
	return added, nil // not added: live, a replay
}

// TieredReplay is the replay store of a gateway with Redis: an in-process
// tier in front of a shared one.
//
// Every proof is recorded in the in-process tier first, whatever Redis does:
// a proof this replica accepted is never accepted by it again, even when the
// Redis call for its replay timed out or Redis lost its records. A proof the
// in-process tier has seen is a replay without asking Redis; a new one is
// then recorded in Redis, which answers for every replica.
//
// When Redis cannot answer, the mode decides (the on_store_error option):
// FallbackDeny denies the request; FallbackLocal accepts it on the in-process
// tier's word, but only for a proof issued after this replica's Redis began
// failing (plus the future skew a proof may carry): a proof that could have
// been accepted through Redis by another replica before the outage is
// refused (authz.ErrStoreRecovering) rather than accepted again. The window
// FallbackLocal leaves open is the outage itself: a proof first used during
// it is known to one replica only, and can be replayed once against each of
// the others until it expires.
type TieredReplay struct {
	local      *LocalReplay
	shared     authz.ReplayStore
	deny       bool
	onFallback func(error)
}

// NewTieredReplay returns a TieredReplay. mode is FallbackLocal (also when
// empty, the default) or FallbackDeny. onFallback, when not nil, is called
// with the shared store's error each time the local tier answers instead; it
// runs on the request path and under an outage on every request, so it must
// be cheap (count, rate-limit the log).
func NewTieredReplay(local *LocalReplay, shared authz.ReplayStore, mode string, onFallback func(error)) (*TieredReplay, error) {
	if local == nil || shared == nil {
		return nil, errors.New("cache: tiered replay store needs a local and a shared store")
	}
	if err := ValidateFallbackMode(mode); err != nil {
		return nil, err
	}
	return &TieredReplay{local: local, shared: shared, deny: mode == FallbackDeny, onFallback: onFallback}, nil
}

// ValidateFallbackMode checks an on_store_error value: FallbackLocal,
// FallbackDeny, or empty (FallbackLocal).
func ValidateFallbackMode(mode string) error {
	switch mode {
	case FallbackLocal, FallbackDeny, "":
		return nil
	}
	return fmt.Errorf("on_store_error must be %s or %s, not %q", FallbackLocal, FallbackDeny, mode)
}

// FirstUse records key in the local tier, then in the shared one. See
// TieredReplay for what happens when the shared store cannot answer.
func (t *TieredReplay) FirstUse(ctx context.Context, key string, issuedAt time.Time, ttl time.Duration) (bool, error) {
	fresh, err := t.local.FirstUse(ctx, key, issuedAt, ttl)
	if err != nil || !fresh {
		return fresh, err // a replay on this replica, or the local tier is full
	}
	fresh, err = t.shared.FirstUse(ctx, key, issuedAt, ttl)
	if err == nil || t.deny || ctx.Err() != nil || errors.Is(err, authz.ErrStoreRecovering) {
		return fresh, err
	}
	// FallbackLocal. Another replica may have accepted this proof through
	// Redis until Redis began failing: only a proof issued after that (and
	// its future skew) is certainly new to every replica.
	var sf *StoreFailure
	if !errors.As(err, &sf) {
		return false, err // a failure that says nothing of when Redis began failing
	}
	if issuedAt.Before(sf.Floor) {
		return false, fmt.Errorf("%w (redis failing: %w)", authz.ErrStoreRecovering, err)
	}
	if t.onFallback != nil {
		t.onFallback(err)
	}
	return true, nil
}
