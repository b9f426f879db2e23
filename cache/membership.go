package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/helsegate/helsegate/authz"
)

// Defaults of MembershipCacheOptions.
const (
	DefaultMembershipPositiveTTL  = 5 * time.Minute
	DefaultMembershipNegativeTTL  = time.Minute
	DefaultMembershipStaleFor     = time.Hour
	DefaultMembershipLocalEntries = 100_000
	DefaultMembershipRedisTimeout = 100 * time.Millisecond
	DefaultMembershipFetchTimeout = 10 * time.Second
)

// Tiers and results reported to MembershipCacheOptions.OnResult. Both sets
// are closed, so they can be metric labels.
const (
	TierLocal    = "local"
	TierRedis    = "redis"
	TierRegistry = "registry"

	ResultHit   = "hit"
	ResultMiss  = "miss"
	ResultStale = "stale"
	ResultError = "error"
)

// Compile-time check that the decorator is a Membership.
var _ authz.Membership = (*CachedMembership)(nil)

// MembershipCacheOptions configures NewCachedMembership. The zero value is a
// local-only cache with the membership block's defaults (cache_ttl 5m,
// negative_ttl 1m, stale_for 1h, timeout 2s).
type MembershipCacheOptions struct {
	// PositiveTTL is how long an answer that authorizes (Answer.Decide at
	// its FetchedAt) is served without asking again. Default 5m.
	PositiveTTL time.Duration
	// NegativeTTL is how long any other answer (no record, not a member,
	// suspended, outside its validity) is served. Default 1m.
	NegativeTTL time.Duration
	// StaleFor is how long after its FetchedAt a last-known answer may be
	// served, marked Stale, while the registry fails. Entries are kept this
	// long (or their TTL, if longer). Default 1h.
	StaleFor time.Duration
	// LocalMax bounds the entries of the in-process tier. Default 100 000.
	LocalMax int
	// Redis is the optional shared tier. Nil: in-process tier only.
	Redis redis.UniversalClient
	// RedisBreaker guards every Redis call of the cache (nil: none). It may
	// be shared with the replay store: both watch the same Redis.
	RedisBreaker *Breaker
	// RedisTimeout bounds one Redis call. Default 100ms.
	RedisTimeout time.Duration
	// KeyPrefix is put before every Redis key and the invalidation
	// channel: pass RedisConfig.Prefix(). Default "helsegate:".
	KeyPrefix string
	// FetchTimeout bounds one shared fill: the Redis reads, the registry
	// call and the Redis write. A fill outlives the request that started it
	// (other requests wait on it), so it does not end with that request.
	// The registry source must have its own, shorter timeout: set this to
	// MembershipFetchTimeout of it. Default 10s.
	FetchTimeout time.Duration
	// Clock tells the time. Default authz.SystemClock.
	Clock authz.Clock
	// OnResult, when set, is told once per lookup of each tier consulted:
	// local hit|miss; redis hit|miss|error; registry hit (answered),
	// error (failed, nothing to serve) or stale (failed, a last-known
	// answer was served). It runs on the request path: it must be cheap.
	OnResult func(tier, result string)
	// OnInvalidation, when set, is told of the subscriber's events:
	// "applied" (a message evicted entries), "malformed" (a message was
	// ignored), "resubscribed" (the subscription was re-established after a
	// failure and the in-process tier cleared).
	OnInvalidation func(event string)
	// Logger receives the subscriber's warnings. Default: no logging.
	Logger *zap.Logger
	// Context is the cache's lifetime: background refreshes (see
	// CachedMembership) run on it, not on the request that started them,
	// and end when it is done. Pass the context that ends with the cache's
	// user. Default: a context that never ends.
	Context context.Context
}

// MembershipFetchTimeout returns the FetchTimeout for a registry source whose
// calls time out after registryTimeout, behind a Redis tier whose calls are
// bounded by redisTimeout (<= 0: DefaultMembershipRedisTimeout). A fill reads
// the generation and the entry before it asks the registry and may read the
// generation again and write the entry after it; the margin covers those four
// Redis calls and a second more. The registry's own timeout then always
// expires inside the fill, and counts against the registry's breaker: a fill
// deadline that expires first reads, to the breaker, as a caller that went
// away, which it does not count, so a registry that hangs would never open it.
func MembershipFetchTimeout(registryTimeout, redisTimeout time.Duration) time.Duration {
	if redisTimeout <= 0 {
		redisTimeout = DefaultMembershipRedisTimeout
	}
	return max(registryTimeout, 0) + 4*redisTimeout + time.Second
}

// CachedMembership is an authz.Membership that caches the answers of another
// (the registry) in an in-process tier and, optionally, a Redis tier shared
// by every replica.
//
// A lookup is answered by the first tier holding a fresh answer: in-process,
// then Redis (the answer is then kept in-process), then the registry, asked
// once per (service, org) at a time however many requests wait for it; its
// answer is kept in both tiers. When the registry fails, the newest
// last-known answer younger than StaleFor is served with Stale set; with none,
// the registry's error is returned. ErrRegistryConfig is never masked: a
// registry refusing our credentials is our misconfiguration.
//
// An expired answer is refreshed synchronously while the registry works: the
// lookup waits for the registry, so a membership the registry revoked is not
// accepted past its TTL. Only while the registry is failing (the last call of
// this cache to it failed: an error, a timeout, or a refusal of its open or
// half-open breaker) is a last-known answer younger than StaleFor served at
// once, without waiting, and refreshed in the background: one fill per
// (service, org) at a time, on the cache's lifetime context (Context), bounded
// by FetchTimeout, storing its answer in both tiers. A background refresh that
// succeeds marks the registry as working again. The price is that, while the
// registry is failing, an answer the registry has since changed is served
// until its refresh completes; and the first expired lookups after the
// registry starts failing still wait, since nothing has failed yet.
//
// Redis failures never fail a lookup: a Redis that does not answer counts as
// a miss of that tier. Invalidations published on the Redis channel (see
// Publish) are applied by Subscribe.
//
// The Records of returned Answers are shared by every caller: do not modify
// them.
type CachedMembership struct {
	next     authz.Membership
	clock    authz.Clock
	posTTL   time.Duration
	negTTL   time.Duration
	staleFor time.Duration
	fetchMax time.Duration
	onResult func(tier, result string)
	onInval  func(event string)
	logger   *zap.Logger

	local *localTier
	rt    *redisTier // nil without Redis (rt: the Redis tier)

	flights singleflight.Group
	// refreshing holds the flight keys of background refreshes in flight,
	// so that lookups served stale meanwhile do not pile up on the flight.
	refreshing sync.Map
	// failing is true while the registry is failing: the last registry call
	// of a fill failed (ErrRegistryConfig excepted: the registry answered).
	failing atomic.Bool
	life    context.Context // background refreshes run on it
	// epoch counts local evictions. A fill that began in an older epoch
	// does not store its answer: it may predate the invalidation.
	epoch        atomic.Uint64
	subscribed   atomic.Bool
	subscribeCtx atomic.Pointer[context.Context] // set by SubscribeOnUse
	// ready is closed once the first subscription attempt has an outcome;
	// unconfirmedUse records that a lookup went ahead before a subscription
	// was confirmed (then the first confirmation clears the in-process tier).
	ready          chan struct{}
	readyOnce      sync.Once
	unconfirmedUse atomic.Bool
}

// NewCachedMembership returns a CachedMembership in front of next. It does no
// network I/O; call Subscribe to receive invalidations.
func NewCachedMembership(next authz.Membership, opts MembershipCacheOptions) *CachedMembership {
	if opts.PositiveTTL <= 0 {
		opts.PositiveTTL = DefaultMembershipPositiveTTL
	}
	if opts.NegativeTTL <= 0 {
		opts.NegativeTTL = DefaultMembershipNegativeTTL
	}
	if opts.StaleFor <= 0 {
		opts.StaleFor = DefaultMembershipStaleFor
	}
	if opts.RedisTimeout <= 0 {
		opts.RedisTimeout = DefaultMembershipRedisTimeout
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = DefaultMembershipFetchTimeout
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = DefaultKeyPrefix
	}
	if opts.Clock == nil {
		opts.Clock = authz.SystemClock
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Context == nil {
		opts.Context = context.Background()
	}
	c := &CachedMembership{
		life:     opts.Context,
		next:     next,
		clock:    opts.Clock,
		posTTL:   opts.PositiveTTL,
		negTTL:   opts.NegativeTTL,
		staleFor: opts.StaleFor,
		fetchMax: opts.FetchTimeout,
		onResult: opts.OnResult,
		onInval:  opts.OnInvalidation,
		logger:   opts.Logger,
		local:    newLocalTier(opts.LocalMax),
		ready:    make(chan struct{}),
	}
	if opts.Redis != nil {
		c.rt = newRedisTier(opts.Redis, opts.KeyPrefix, opts.RedisBreaker, opts.RedisTimeout)
	}
	return c
}

// Lookup answers from the first tier holding a fresh answer, or from a
// last-known answer while the registry fails (see CachedMembership).
func (c *CachedMembership) Lookup(ctx context.Context, service, org string) (authz.Answer, error) {
	k := tierKey{service: service, org: org}
	e, _ := c.local.shard(k).Get(k) // not get: one call less on every hit
	if e != nil && c.clock.Now().Before(e.freshUntil) {
		c.report(TierLocal, ResultHit)
		return e.ans, nil
	}
	c.report(TierLocal, ResultMiss)
	c.subscribeIfAsked(ctx)

	if c.failing.Load() {
		if ans, ok := c.serveStale(ctx, k, e); ok {
			return ans, nil
		}
	}
	r, err := c.fetch(ctx, k)
	if r.redis != "" {
		c.report(TierRedis, r.redis)
	}
	switch {
	case err == nil:
		if r.registry {
			c.report(TierRegistry, ResultHit)
		}
		return r.ans, nil
	case errors.Is(err, authz.ErrRegistryConfig):
		c.report(TierRegistry, ResultError)
		return authz.Answer{}, err
	}
	if ans, ok := c.lastKnown(e, r.stale); ok {
		c.report(TierRegistry, ResultStale)
		return ans, nil
	}
	c.report(TierRegistry, ResultError)
	return authz.Answer{}, err
}

// fillResult is what one shared fill found.
type fillResult struct {
	ans      authz.Answer
	redis    string        // result of the Redis tier; "" when not consulted
	registry bool          // ans came from the registry
	stale    *authz.Answer // an answer Redis holds past its TTL
}

// fetch runs, or joins, the fill of k and waits for it or for ctx.
func (c *CachedMembership) fetch(ctx context.Context, k tierKey) (fillResult, error) {
	epoch := c.epoch.Load()
	key := flightKey(epoch, k)
	fillCtx := context.WithoutCancel(ctx) // keeps trace spans, not the caller's deadline
	ch := c.flights.DoChan(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(fillCtx, c.fetchMax)
		defer cancel()
		return c.fill(ctx, k, epoch)
	})
	select {
	case res := <-ch:
		r, _ := res.Val.(fillResult)
		return r, res.Err
	case <-ctx.Done():
		return fillResult{}, fmt.Errorf("%w: %w", authz.ErrRegistryUnavailable, ctx.Err())
	}
}

// flightKey names the fill of k begun in epoch. The epoch is part of it: a
// request that arrives after an invalidation never joins a fill that began
// before it.
func flightKey(epoch uint64, k tierKey) string {
	return fmt.Sprintf("%d\x00%s\x00%s", epoch, k.service, k.org)
}

// serveStale answers a lookup at once, while the registry is failing, with
// the last-known answer of k younger than StaleFor: the in-process entry e
// or, without one, the Redis tier's (then kept in-process, so that the next
// lookups find it there). It starts a background refresh of k and reports
// false when there is nothing young enough to serve: the lookup then goes
// through the registry as usual.
func (c *CachedMembership) serveStale(ctx context.Context, k tierKey, e *localEntry) (authz.Answer, bool) {
	ans, ok := c.lastKnown(e, nil)
	redisResult := ""
	if !ok && c.rt != nil {
		epoch := c.epoch.Load()
		got, found, err := c.rt.get(ctx, k)
		if err != nil || !found {
			return authz.Answer{}, false
		}
		got.Source = TierRedis
		if c.fresh(got, c.clock.Now()) {
			c.storeLocal(k, got, epoch)
			c.report(TierRedis, ResultHit)
			return got, true
		}
		if ans, ok = c.lastKnown(nil, &got); !ok {
			return authz.Answer{}, false
		}
		c.storeLocal(k, got, epoch) // past its TTL: only ever served stale
		redisResult = ResultMiss
	}
	if !ok {
		return authz.Answer{}, false
	}
	c.refresh(k)
	if redisResult != "" {
		c.report(TierRedis, redisResult)
	}
	c.report(TierRegistry, ResultStale)
	return ans, true
}

// refresh starts the fill of k in the background on the cache's lifetime
// context, bounded by FetchTimeout, unless a fill of k is already in flight.
// Nobody waits for it; what it finds is kept in both tiers as any fill's.
func (c *CachedMembership) refresh(k tierKey) {
	if c.life.Err() != nil {
		return
	}
	epoch := c.epoch.Load()
	key := flightKey(epoch, k)
	if _, busy := c.refreshing.LoadOrStore(key, struct{}{}); busy {
		return
	}
	ch := c.flights.DoChan(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(c.life, c.fetchMax)
		defer cancel()
		return c.fill(ctx, k, epoch)
	})
	// The flight may be a lookup's, joined rather than started: whichever
	// it is, the refresh is over when it ends.
	go func() {
		<-ch
		c.refreshing.Delete(key)
	}()
}

// fill is one shared look through the Redis tier and the registry.
func (c *CachedMembership) fill(ctx context.Context, k tierKey, epoch uint64) (fillResult, error) {
	// Another fill may have finished between our miss and this one.
	if e := c.local.get(k); e != nil && c.clock.Now().Before(e.freshUntil) {
		return fillResult{ans: e.ans}, nil
	}
	var r fillResult
	if c.rt != nil {
		ans, found, err := c.rt.get(ctx, k)
		switch {
		case err != nil:
			r.redis = ResultError
		case !found:
			r.redis = ResultMiss
		case c.fresh(ans, c.clock.Now()):
			r.redis = ResultHit
			c.storeLocal(k, ans, epoch)
			ans.Source = TierRedis
			r.ans = ans
			return r, nil
		default:
			r.redis = ResultMiss
			ans.Source = TierRedis
			r.stale = &ans
		}
	}
	ans, err := c.next.Lookup(ctx, k.service, k.org)
	// A registry refusing our credentials answered: it is not failing.
	c.failing.Store(err != nil && !errors.Is(err, authz.ErrRegistryConfig))
	if err != nil {
		return r, err
	}
	if ans.FetchedAt.IsZero() {
		ans.FetchedAt = c.clock.Now()
	}
	if ans.Source == "" {
		ans.Source = TierRegistry
	}
	ans.Stale = false
	c.storeLocal(k, ans, epoch)
	if c.rt != nil && c.epoch.Load() == epoch {
		_ = c.rt.set(ctx, k, ans, c.keepFor(ans)) // a Redis failure is never fatal
	}
	r.ans, r.registry = ans, true
	return r, nil
}

// lastKnown returns the newest of the local entry and the Redis answer that
// is younger than StaleFor, marked Stale.
func (c *CachedMembership) lastKnown(local *localEntry, fromRedis *authz.Answer) (authz.Answer, bool) {
	now := c.clock.Now()
	var best *authz.Answer
	if local != nil && now.Sub(local.ans.FetchedAt) < c.staleFor {
		best = &local.ans
	}
	if fromRedis != nil && now.Sub(fromRedis.FetchedAt) < c.staleFor &&
		(best == nil || fromRedis.FetchedAt.After(best.FetchedAt)) {
		best = fromRedis
	}
	if best == nil {
		return authz.Answer{}, false
	}
	ans := *best
	ans.Stale = true
	return ans, true
}

// ttl returns how long ans is fresh: PositiveTTL when it authorized at the
// time it was fetched, NegativeTTL otherwise. Decisions are still made by
// the caller at its own time: a cached record whose validity ends is denied
// from then on.
func (c *CachedMembership) ttl(ans authz.Answer) time.Duration {
	if ok, _ := ans.Decide(ans.FetchedAt); ok {
		return c.posTTL
	}
	return c.negTTL
}

// keepFor returns how long ans is kept after its FetchedAt: long enough to
// serve it fresh, and stale for StaleFor.
func (c *CachedMembership) keepFor(ans authz.Answer) time.Duration {
	return max(c.ttl(ans), c.staleFor)
}

// fresh reports whether ans is younger than its TTL at now.
func (c *CachedMembership) fresh(ans authz.Answer, now time.Time) bool {
	return now.Sub(ans.FetchedAt) < c.ttl(ans)
}

// storeLocal keeps ans in the in-process tier unless an invalidation
// happened since epoch.
func (c *CachedMembership) storeLocal(k tierKey, ans authz.Answer, epoch uint64) {
	// An answer fetched "in the future" (another replica's clock) is aged
	// from now, so that it cannot outlive its TTL here.
	base := ans.FetchedAt
	if now := c.clock.Now(); base.After(now) {
		base = now
	}
	ans.Source = TierLocal
	ans.Stale = false
	e := &localEntry{ans: ans, freshUntil: base.Add(c.ttl(ans))}
	c.local.put(k, e, base.Add(c.keepFor(ans)), c.clock.Now(), func() bool { return c.epoch.Load() == epoch })
}

// report tells OnResult, if set.
func (c *CachedMembership) report(tier, result string) {
	if c.onResult != nil {
		c.onResult(tier, result)
	}
}

// FetchTimeout returns the bound of one shared fill (see
// MembershipCacheOptions.FetchTimeout).
func (c *CachedMembership) FetchTimeout() time.Duration { return c.fetchMax }

// Len returns the number of entries of the in-process tier, expired ones
// not yet swept included.
func (c *CachedMembership) Len() int { return c.local.len() }
