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
)

// Timings of the invalidation subscriber.
const (
	subscribeTimeout    = 5 * time.Second        // for Redis to confirm a subscription
	subscribeWait       = 250 * time.Millisecond // the longest the first lookups wait for that
	subscribeHealth     = 30 * time.Second       // silence after which the connection is pinged
	subscribeMinBackoff = 100 * time.Millisecond // first wait after a failure
	subscribeMaxBackoff = 10 * time.Second
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

// Publish invalidates the cached answers of org for service on every replica
// that shares the Redis behind client and runs Subscribe: it first makes
// Redis forget them, then publishes {"service":…,"organization":…} on
// InvalidationChannel(prefix). An empty org means every organization of the
// service; an empty service, every service of the organization; both empty,
// everything ({"all":true}). Pass RedisConfig.Prefix() as prefix ("" is the
// default prefix).
//
// A wildcard cannot be deleted key by key on Redis Cluster, so it moves every
// replica to a new generation of keys instead: the whole Redis tier starts
// cold, whatever the wildcard named.
func Publish(ctx context.Context, client redis.UniversalClient, prefix, service, org string) error {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	if _, err := forgetShared(ctx, client, prefix, service, org); err != nil {
		return fmt.Errorf("cache: membership invalidation: %w", err)
	}
	msg := invalidation{Service: service, Organization: org, All: service == "" && org == ""}
	payload, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if err := client.Publish(ctx, InvalidationChannel(prefix), payload).Err(); err != nil {
		return fmt.Errorf("cache: membership invalidation: %w", err)
	}
	return nil
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
// fails it is re-established with backoff; as messages may have been lost
// meanwhile, the in-process tier is then cleared.
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
func (c *CachedMembership) subscribeLoop(ctx context.Context) {
	backoff := subscribeMinBackoff
	first := true
	for ctx.Err() == nil {
		ps := c.rt.client.Subscribe(ctx, InvalidationChannel(c.rt.prefix))
		stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // unblocks a pending read
		_, err := ps.ReceiveTimeout(ctx, subscribeTimeout)        // the confirmation
		if err == nil {
			backoff = subscribeMinBackoff
			// Whatever happened to the generation while we were not
			// listening, read it again; what was cached unsubscribed is
			// dropped, since invalidations may have been missed.
			c.rt.forgetGen()
			if !first {
				c.evictLocal("", "")
				c.event(InvalidationResubscribed)
			} else if c.unconfirmedUse.Load() {
				c.evictLocal("", "")
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
		c.logger.Warn("membership invalidation subscription failed; retrying",
			zap.Error(err), zap.Duration("backoff", backoff))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, subscribeMaxBackoff)
	}
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
		if m, ok := v.(*redis.Message); ok {
			c.apply(m.Payload)
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
