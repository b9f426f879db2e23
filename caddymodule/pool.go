package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// pool shares what outlives one config across reloads and sites: one key
// source per issuer, one Redis client per distinct Redis config, one
// in-process replay store per process. Each entry is destructed when the last
// config that uses it is cleaned up.
var pool = caddy.NewUsagePool()

// localNoticeOnce makes the in-process store notice appear once per process.
var localNoticeOnce atomic.Bool

// localReplaySize bounds the in-process replay store.
const localReplaySize = 1_000_000

// pooledKeys is an issuer's key source. Its background refresh runs on a
// context of its own, derived from the Caddy context that created it but
// cancelled only when the last user lets go, so a reload keeps the cached keys.
type pooledKeys struct {
	*authz.IssuerKeys
	cancel context.CancelFunc
}

func (p *pooledKeys) Destruct() error {
	p.cancel()
	liveKeys.remove(p)
	return nil
}

type pooledRedis struct {
	client  redis.UniversalClient
	ids     *cache.ServerIdentities // the servers its connections reached
	breaker *cache.Breaker
	addrs   []string          // host:port, never credentials (health report)
	redact  func(error) error // removes the password from an error
}

func (p *pooledRedis) Destruct() error {
	liveRedis.remove(p)
	liveBreakers.remove(p.breaker)
	return p.client.Close()
}

type pooledLocal struct{ *cache.LocalReplay }

func (pooledLocal) Destruct() error { return nil }

// issuerKeys returns the shared key source for the configured issuer.
func (h *Handler) issuerKeys(ctx caddy.Context, cfg authz.Config) (authz.KeySource, error) {
	key := "keys|" + cfg.Issuer + "|" + cfg.JWKSURL
	logger := h.logger
	m := getMetrics()
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		kctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		onRefresh := func(ok bool) {
			m.jwksRefresh(ok)
			if !ok {
				logger.Warn("fetching the issuer's keys failed; the last good keys keep serving", zap.String("issuer", cfg.Issuer))
			}
		}
		client := &http.Client{Timeout: 10 * time.Second}
		pk := &pooledKeys{IssuerKeys: authz.NewIssuerKeys(kctx, cfg.Issuer, cfg.JWKSURL, client, authz.SystemClock, onRefresh), cancel: cancel}
		liveKeys.add(pk)
		return pk, nil
	})
	if err != nil {
		return nil, err
	}
	h.poolKeys = append(h.poolKeys, key)
	return v.(*pooledKeys), nil
}

// redisClient returns the shared client of the configured Redis, or nil
// without one. It does not dial.
func (h *Handler) redisClient() (*pooledRedis, error) {
	if h.Redis == nil {
		return nil, nil
	}
	opts, err := h.Redis.UniversalOptions()
	if err != nil {
		return nil, fmt.Errorf("helseid: redis: %w", err)
	}
	key := "redis|" + h.Redis.PoolKey()
	logger := h.logger
	rcfg := *h.Redis
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		installRedisLogger(rcfg.Secrets()) // before the client can log
		br := newRedisBreaker(logger)
		client, ids := cache.NewRedisClient(opts)
		pr := &pooledRedis{client: client, ids: ids, breaker: br, addrs: opts.Addrs, redact: rcfg.Redact}
		liveBreakers.add(br)
		liveRedis.add(pr)
		return pr, nil
	})
	if err != nil {
		return nil, err
	}
	h.poolKeys = append(h.poolKeys, key)
	return v.(*pooledRedis), nil
}

// newRedisBreaker returns a breaker named "redis" that probes a dead Redis
// every cache.RedisHalfOpenAfter, logging and counting its changes.
func newRedisBreaker(logger *zap.Logger) *cache.Breaker {
	return cache.NewBreaker("redis", cache.WithHalfOpenAfter(cache.RedisHalfOpenAfter), cache.WithStateChange(breakerChanged(logger)))
}

// pooledReplay is the shared replay store of one Redis and key prefix: what
// it knows of the servers' epochs and the floors it applies must outlive a
// config reload, and every site using that Redis and prefix shares them.
type pooledReplay struct{ *cache.RedisReplay }

func (p pooledReplay) Destruct() error {
	for _, b := range p.Breakers() {
		liveBreakers.remove(b)
	}
	return nil
}

// replayStore returns the replay store: the process's in-process store, and
// behind it the shared Redis store (pr) when redis is configured.
func (h *Handler) replayStore(pr *pooledRedis, futureSkew time.Duration) (authz.ReplayStore, error) {
	v, _, err := pool.LoadOrNew("replay|local", func() (caddy.Destructor, error) {
		return pooledLocal{cache.NewLocalReplay(localReplaySize, authz.SystemClock)}, nil
	})
	if err != nil {
		return nil, err
	}
	h.poolKeys = append(h.poolKeys, "replay|local")
	local := v.(pooledLocal).LocalReplay
	if pr == nil {
		if localNoticeOnce.CompareAndSwap(false, true) {
			h.logger.Info("no redis configured: DPoP replay protection uses an in-process store, valid for a single instance only")
		}
		return local, nil
	}
	logger := h.logger
	m := getMetrics()
	key := "replay|" + h.Redis.PoolKey() + "|" + h.Redis.Prefix()
	v, _, err = pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledReplay{cache.NewRedisReplay(pr.client, cache.RedisReplayOptions{
			Prefix:     h.Redis.Prefix(),
			Breaker:    pr.breaker,
			Identities: pr.ids,
			FutureSkew: futureSkew,
			NewBreaker: func(string) *cache.Breaker {
				br := newRedisBreaker(logger)
				liveBreakers.add(br)
				return br
			},
			OnLoss: func(why string, floor time.Time) {
				m.replayLosses.WithLabelValues(why).Inc()
				logger.Warn("redis replay store may have lost records: refusing proofs issued before the floor",
					zap.String("why", why), zap.Time("floor", floor))
			},
		})}, nil
	})
	if err != nil {
		return nil, err
	}
	h.poolKeys = append(h.poolKeys, key)
	shared := v.(pooledReplay).RedisReplay
	shared.AllowFutureSkew(futureSkew)
	return cache.NewTieredReplay(local, shared, h.OnStoreError, func(err error) {
		m.replayFallbacks.Inc()
		if h.depLog.Allow() {
			logger.Warn("redis replay store failed; using the in-process store", zap.Error(err))
		}
	})
}
