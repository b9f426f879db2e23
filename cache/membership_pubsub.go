package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Timings of the invalidation subscriber.
const (
	subscribeTimeout    = 5 * time.Second        // for Redis to confirm a subscription
	subscribeWait       = 250 * time.Millisecond // the longest the first lookups wait for that
	subscribeHealth     = 30 * time.Second       // silence after which the connection is pinged
	subscribeMinBackoff = 100 * time.Millisecond // first wait after a failure
	// subscribeMaxBackoff caps the wait between attempts while the
	// subscription keeps failing: short enough that the subscriber is back
	// within a second of a failover (the new master answers on the next
	// attempt), long enough that a dead Redis sees two attempts a second.
	subscribeMaxBackoff = 500 * time.Millisecond
	// subscribeReloadEvery rate-limits the reloads of a Redis Cluster's slot
	// map that subscription failures ask for.
	subscribeReloadEvery = 250 * time.Millisecond
	// subscribeLogEvery rate-limits the warnings of a subscription that
	// keeps failing.
	subscribeLogEvery = 30 * time.Second
)

// Events reported to MembershipCacheOptions.OnInvalidation.
const (
	InvalidationApplied      = "applied"
	InvalidationMalformed    = "malformed"
	InvalidationResubscribed = "resubscribed"
)

// invalidation is the message of the invalidation channel: a service and an
// organization, either of which may be left out to mean every one, or "all".
type invalidation struct {
	Service      string `json:"service,omitempty"`
	Organization string `json:"organization,omitempty"`
	All          bool   `json:"all,omitempty"`
}

// InvalidationChannel returns the Redis pub/sub channel of membership
// invalidations under prefix.
func InvalidationChannel(prefix string) string {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return prefix + membershipSpace + "invalidate"
}

// InvalidationError is the error of Publish: which of its two steps failed.
// Each step is tried whatever became of the other.
type InvalidationError struct {
	// Forget is the failure of making Redis forget the answers (DEL of the
	// pair's entry, or INCR of the generation for a wildcard); nil when done.
	// Replicas that evict may then refill from the entries Redis kept.
	Forget error
	// Publish is the failure of the PUBLISH; nil when done. No other
	// replica heard of the invalidation.
	Publish error
}

func (e *InvalidationError) Error() string {
	switch {
	case e.Forget != nil && e.Publish != nil:
		return fmt.Sprintf("cache: membership invalidation: redis tier: %v; publish: %v", e.Forget, e.Publish)
	case e.Forget != nil:
		return fmt.Sprintf("cache: membership invalidation: redis tier: %v", e.Forget)
	default:
		return fmt.Sprintf("cache: membership invalidation: publish: %v", e.Publish)
	}
}

// Unwrap returns the failures of the steps.
func (e *InvalidationError) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.Forget, e.Publish} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Publish invalidates the cached answers of org for service on every replica
// that shares the Redis behind client and runs Subscribe: it first makes
// Redis forget them, then publishes {"service":…,"organization":…} on
// InvalidationChannel(prefix). An empty org means every organization of the
// service; an empty service, every service of the organization; both empty,
// everything ({"all":true}). Pass RedisConfig.Prefix() as prefix ("" is the
// default prefix).
//
// It returns the number of subscribers PUBLISH reported, as Redis counted
// them: on a Redis Cluster the message is published on the master of the
// channel's slot, where every replica's subscription is, so the count is that
// of the replicas listening (when that master cannot be reached, on another
// node, which carries the message to the whole cluster but counts only its
// own subscribers). The error, when not nil, is an *InvalidationError naming
// the step that failed; both steps are always tried.
//
// A wildcard cannot be deleted key by key on Redis Cluster, so it moves every
// replica to a new generation of keys instead: the whole Redis tier starts
// cold, whatever the wildcard named.
//
// Publish leaves every in-process tier to the subscribers, the publishing
// process's too: use CachedMembership.Publish to evict there at once.
func Publish(ctx context.Context, client redis.UniversalClient, prefix, service, org string) (int64, error) {
	return publish(ctx, client, prefix, service, org, nil)
}

// publish is Publish, calling forgotten (when not nil) between the two steps
// with what the first one did.
func publish(ctx context.Context, client redis.UniversalClient, prefix, service, org string, forgotten func(gen int64, err error)) (int64, error) {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	msg := invalidation{Service: service, Organization: org, All: service == "" && org == ""}
	payload, err := json.Marshal(msg)
	if err != nil {
		return 0, err
	}
	gen, ferr := forgetShared(ctx, client, prefix, service, org)
	if forgotten != nil {
		forgotten(gen, ferr)
	}
	n, perr := publishMessage(ctx, client, InvalidationChannel(prefix), payload)
	if ferr != nil || perr != nil {
		return n, &InvalidationError{Forget: ferr, Publish: perr}
	}
	return n, nil
}

// publishMessage sends PUBLISH. go-redis sends it, as a command without a
// key, to any master of a Cluster, whose answer counts only the subscribers
// connected to that node; the subscribers are on the master of the channel's
// slot (see subscribeLoop), so that is where it goes first.
func publishMessage(ctx context.Context, client redis.UniversalClient, channel string, payload []byte) (int64, error) {
	if cc, ok := client.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, channel)
		if err == nil {
			n, err := node.Publish(ctx, channel, payload).Result()
			if err == nil {
				return n, nil
			}
		}
		// The slot map may be stale (a failover): fix it for the next
		// time, and publish through any node, which carries the message
		// to every node of the cluster.
		cc.ReloadState(ctx)
	}
	return client.Publish(ctx, channel, payload).Result()
}

// Publish invalidates the answers of org for service as the package-level
// Publish does, through this cache's Redis and key prefix, and evicts them
// from this cache's in-process tier at once, once Redis has been asked to
// forget them, whether or not that or the publication succeeded: this
// process's own subscription may be down. It returns what Publish returns.
// Without Redis it evicts in-process and returns 0 and nil: there is no
// other replica to tell.
func (c *CachedMembership) Publish(ctx context.Context, service, org string) (int64, error) {
	if c.rt == nil {
		c.evictLocal(service, org)
		return 0, nil
	}
	wildcard := service == "" || org == ""
	if wildcard {
		c.rt.forgetGen()
	}
	return publish(ctx, c.rt.client, c.rt.prefix, service, org, func(gen int64, err error) {
		if err == nil && wildcard {
			c.rt.setGen(gen)
		}
		// After Redis: a lookup in between would otherwise refill this
		// tier from the Redis entry being deleted.
		c.evictLocal(service, org)
	})
}

// EvictLocal forgets the answers of org for service ("" for either means
// every one) in this cache's in-process tier only, and for a wildcard the
// generation of the Redis tier it knows, so that its next Redis read follows
// a new one. It is for the caches that share the Redis and key prefix another
// cache's Publish went out on: it reached Redis for them.
func (c *CachedMembership) EvictLocal(service, org string) {
	if c.rt != nil && (service == "" || org == "") {
		c.rt.forgetGen()
	}
	c.evictLocal(service, org)
}

// Invalidate forgets the answers of org for service in this instance's
// in-process tier and in Redis ("" for either means every one, as for
// Publish). Other replicas keep their in-process answers: use Publish to
// reach them. A Redis failure is logged, not returned: the local eviction
// is done regardless.
func (c *CachedMembership) Invalidate(ctx context.Context, service, org string) {
	if c.rt != nil {
		wildcard := service == "" || org == ""
		if wildcard {
			c.rt.forgetGen()
		}
		err := c.rt.do(ctx, func(ctx context.Context) error {
			gen, err := forgetShared(ctx, c.rt.client, c.rt.prefix, service, org)
			if err == nil && wildcard {
				c.rt.setGen(gen)
			}
			return err
		})
		if err != nil {
			c.logger.Warn("membership invalidation did not reach redis", zap.Error(err))
		}
	}
	// After Redis: a lookup in between would otherwise refill this tier
	// from the Redis entry being deleted.
	c.evictLocal(service, org)
}

// evictLocal deletes matching entries of the in-process tier and moves to a
// new epoch, so that fills begun before do not store what they find.
func (c *CachedMembership) evictLocal(service, org string) {
	c.epoch.Add(1)
	c.local.evict(service, org)
}

// Subscribe starts a goroutine that applies the invalidations published on
// the Redis channel (see Publish) until ctx is done. It returns at once and
// does nothing without Redis or when already called. If the subscription
// fails it is re-established, retrying at least twice a second; as messages
// may have been lost meanwhile, the in-process tier is then cleared.
func (c *CachedMembership) Subscribe(ctx context.Context) {
	if c.rt == nil || !c.subscribed.CompareAndSwap(false, true) {
		return
	}
	go c.subscribeLoop(ctx)
}

// SubscribeOnUse makes the first lookup that misses the in-process tier
// call Subscribe(ctx): until then nothing is cached that an invalidation
// could concern, and a config that is only provisioned and validated
// (caddy validate) never dials Redis.
func (c *CachedMembership) SubscribeOnUse(ctx context.Context) {
	if c.rt != nil {
		c.subscribeCtx.Store(&ctx)
	}
}

// subscribeIfAsked starts the subscription SubscribeOnUse asked for and
// waits, at most subscribeWait, for its first outcome: a fill that went
// ahead of the confirmation could store an answer invalidated meanwhile.
// Once there is an outcome it costs an atomic load and a closed channel.
func (c *CachedMembership) subscribeIfAsked(ctx context.Context) {
	p := c.subscribeCtx.Load()
	if p == nil {
		return
	}
	if !c.subscribed.Load() {
		c.Subscribe(*p)
	}
	select {
	case <-c.ready:
		return
	default:
	}
	t := time.NewTimer(subscribeWait)
	defer t.Stop()
	select {
	case <-c.ready:
	case <-t.C:
		c.unconfirmedUse.Store(true)
	case <-ctx.Done():
		c.unconfirmedUse.Store(true)
	}
}

// firstOutcome marks the first subscription attempt as over.
func (c *CachedMembership) firstOutcome(ok bool) {
	if !ok {
		c.unconfirmedUse.Store(true) // lookups go ahead unsubscribed
	}
	c.readyOnce.Do(func() { close(c.ready) })
}

// subscribeLoop subscribes, receives until the subscription fails, and
// starts again after a backoff, until ctx is done.
//
// Each attempt is a new PubSub: go-redis picks the node when it dials, so a
// new connection goes to the master of the moment. On Redis Cluster that is
// the master of the channel's slot in the client's slot map, which go-redis
// reloads by itself only on a MOVED or ASK answer or once a minute: a
// subscription whose master died would keep dialing the dead address, while
// the cluster promoted a replica. So a failed attempt also asks for a reload
// of the slot map (see retryWait), and the next attempt goes as soon as the
// map names a new master for the slot, or subscribeMaxBackoff later. Through
// Sentinel, every dial asks a Sentinel for the master's address, so the
// attempt after a Sentinel names the new master (at most subscribeMaxBackoff
// later) reaches it.
//
// Messages are read with ReceiveTimeout rather than go-redis's
// PubSub.Channel: Channel reconnects on its own, silently, so a gap in the
// subscription (invalidations missed while it was down) could not be seen
// and answered by dropping the in-process tier, and its pings and
// reconnects keep no count of failures for the backoff above.
func (c *CachedMembership) subscribeLoop(ctx context.Context) {
	newWarnLimit := func() *rate.Limiter { return rate.NewLimiter(rate.Every(subscribeLogEvery), 1) }
	channel := InvalidationChannel(c.rt.prefix)
	backoff := subscribeMinBackoff
	first := true
	var (
		reloaded time.Time        // last reload of the cluster's slot map
		warn     = newWarnLimit() // the failure warnings: one per subscribeLogEvery
		failures int              // consecutive failed attempts
	)
	for ctx.Err() == nil {
		ps := c.rt.client.Subscribe(ctx)                          // no channel yet: Subscribe below returns the dial's error
		stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // unblocks a pending read
		err := ps.Subscribe(ctx, channel)
		if err == nil {
			_, err = ps.ReceiveTimeout(ctx, subscribeTimeout) // the confirmation
		}
		if err == nil {
			backoff = subscribeMinBackoff
			if failures > 0 && !first {
				c.logger.Info("membership invalidation subscription re-established", zap.Int("failed_attempts", failures))
			}
			failures, warn = 0, newWarnLimit() // the next failure is told at once
			if !first {
				c.resubscribed()
			} else {
				// Whatever happened to the generation before we were
				// listening, read it again; what was cached unsubscribed
				// is dropped, since invalidations may have been missed.
				c.rt.forgetGen()
				if c.unconfirmedUse.Load() {
					c.evictLocal("", "")
				}
			}
			first = false
			c.firstOutcome(true)
			err = c.receive(ctx, ps)
		} else {
			c.firstOutcome(false)
		}
		stop()
		_ = ps.Close()
		if ctx.Err() != nil {
			return
		}
		failures++
		if warn.Allow() {
			c.logger.Warn("membership invalidation subscription failed; retrying",
				zap.Error(err), zap.Int("failed_attempts", failures), zap.Duration("backoff", backoff))
		}
		if !c.retryWait(ctx, backoff, channel, &reloaded) {
			return
		}
		backoff = min(2*backoff, subscribeMaxBackoff)
	}
}

// retryWait waits backoff before the next attempt, or less on a Redis
// Cluster: there it asks for a reload of the slot map (at most every
// subscribeReloadEvery, go-redis reloads in the background), and ends the
// wait as soon as the map names another master for the channel's slot,
// which is the promotion the attempt was waiting for. It reports false when
// ctx is done.
func (c *CachedMembership) retryWait(ctx context.Context, backoff time.Duration, channel string, reloaded *time.Time) bool {
	cc, _ := c.rt.client.(*redis.ClusterClient)
	failed := ""
	if cc != nil {
		failed = slotMaster(ctx, cc, channel) // "" when the client has no slot map yet
	}
	deadline := time.Now().Add(backoff)
	for {
		if cc != nil && time.Since(*reloaded) >= subscribeReloadEvery {
			cc.ReloadState(ctx)
			*reloaded = time.Now()
		}
		wait := time.Until(deadline)
		if failed != "" {
			wait = min(wait, subscribeReloadEvery/5)
		}
		if wait <= 0 {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		// The client has a slot map: reading it does no I/O.
		if failed != "" && slotMaster(ctx, cc, channel) != failed {
			return true
		}
	}
}

// slotMaster returns the address of the master of channel's slot in cc's
// slot map, or "" when there is none.
func slotMaster(ctx context.Context, cc *redis.ClusterClient, channel string) string {
	node, err := cc.MasterForKey(ctx, channel)
	if err != nil {
		return ""
	}
	return node.Options().Addr
}

// resubscribed is called once the subscription is back after a gap: the
// generation is read again, and the in-process tier is cleared, since
// invalidations published during the gap were missed.
func (c *CachedMembership) resubscribed() {
	c.rt.forgetGen()
	c.evictLocal("", "")
	c.event(InvalidationResubscribed)
}

// receive applies messages until the connection fails or stays silent after
// a ping.
func (c *CachedMembership) receive(ctx context.Context, ps *redis.PubSub) error {
	pinged := false
	for {
		v, err := ps.ReceiveTimeout(ctx, subscribeHealth)
		var ne net.Error
		switch {
		case err != nil && errors.As(err, &ne) && ne.Timeout() && !pinged:
			if err := ps.Ping(ctx); err != nil {
				return err
			}
			pinged = true
			continue
		case err != nil:
			return err
		}
		pinged = false
		c.handle(v)
	}
}

// handle acts on one thing the subscription received.
func (c *CachedMembership) handle(v any) {
	switch m := v.(type) {
	case *redis.Message:
		c.apply(m.Payload)
	case *redis.Subscription:
		// A confirmation while subscribed: go-redis dialed again and
		// resubscribed on its own, after a connection it found unusable.
		// What was published in between was missed.
		if m.Kind == "subscribe" {
			c.resubscribed()
		}
	}
}

// apply evicts what one message names, or counts and logs it as malformed.
func (c *CachedMembership) apply(payload string) {
	var m invalidation
	err := json.Unmarshal([]byte(payload), &m)
	switch {
	case err != nil:
	case m.All && (m.Service != "" || m.Organization != ""):
		err = errors.New(`"all" with a service or an organization`)
	case !m.All && m.Service == "" && m.Organization == "":
		err = errors.New("names no service, no organization and not all")
	}
	if err != nil {
		c.event(InvalidationMalformed)
		c.logger.Warn("malformed membership invalidation ignored", zap.Int("bytes", len(payload)), zap.Error(err))
		return
	}
	if m.Service == "" || m.Organization == "" {
		// The publisher moved Redis to a new generation.
		c.rt.forgetGen()
	}
	c.evictLocal(m.Service, m.Organization)
	c.event(InvalidationApplied)
}

// event tells OnInvalidation, if set.
func (c *CachedMembership) event(name string) {
	if c.onInval != nil {
		c.onInval(name)
	}
}
