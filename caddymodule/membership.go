package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/cache/registry"
)

// MembershipConfig is the membership block: after the token and proof pass,
// the caller's organization must be authorized for Service by the registry
// (Medlemstjenesten, through HTTP contract v1 or a JSON file).
type MembershipConfig struct {
	// The service the organization must be authorized for. Required.
	Service string `json:"service,omitempty"`
	// Base URL of the registry (HTTP contract v1). https unless loopback.
	// Exactly one of registry and file.
	Registry string `json:"registry,omitempty"`
	// Path of a JSON registry file, reloaded when it changes. A reload
	// evicts the cached answers at once, and they are never put in Redis:
	// each replica answers from its own file.
	File string `json:"file,omitempty"`
	// Sent to the registry as Authorization: Bearer.
	RegistryToken string `json:"registry_token,omitempty"`
	// Which org number must be authorized: "parent" (default), "child" or "both".
	Org string `json:"org,omitempty"`
	// How long a positive decision is cached. Default: 5m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
	// How long a negative decision is cached. Default: 1m.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	// How long a last-known decision may be used while the registry is down. Default: 1h.
	StaleFor caddy.Duration `json:"stale_for,omitempty"`
	// Timeout of one registry call. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// unmarshalMembership parses
//
//	membership <service> {
//		registry <url> | registry file <path> | file <path>
//		registry_token <token>
//		org parent|child|both
//		cache_ttl <duration>
//		negative_ttl <duration>
//		stale_for <duration>
//		timeout <duration>
//	}
func (h *Handler) unmarshalMembership(d *caddyfile.Dispenser) error {
	m := &MembershipConfig{}
	h.Membership = m
	if err := oneArg(d, &m.Service); err != nil {
		return err
	}
	// "file <path>" is "registry file <path>": the two are one option.
	if _, err := parseBlock(d, "membership option", m, membershipOptions, map[string]string{"file": "registry"}); err != nil {
		return err
	}
	if err := m.checkSource(); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// membershipOptions are the parsers of the membership block.
var membershipOptions = parsers[MembershipConfig]{
	"registry":       unmarshalRegistry,
	"file":           func(m *MembershipConfig, d *dispenser) error { return oneArg(d, &m.File) },
	"registry_token": func(m *MembershipConfig, d *dispenser) error { return oneArg(d, &m.RegistryToken) },
	"org":            func(m *MembershipConfig, d *dispenser) error { return checkedArg(d, &m.Org, written("org", checkOrg)) },
	"cache_ttl":      func(m *MembershipConfig, d *dispenser) error { return duration(d, &m.CacheTTL) },
	"negative_ttl":   func(m *MembershipConfig, d *dispenser) error { return duration(d, &m.NegativeTTL) },
	"stale_for":      func(m *MembershipConfig, d *dispenser) error { return duration(d, &m.StaleFor) },
	"timeout":        func(m *MembershipConfig, d *dispenser) error { return duration(d, &m.Timeout) },
}

// unmarshalRegistry reads registry <url> | registry file <path>.
func unmarshalRegistry(m *MembershipConfig, d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1:
		m.Registry = args[0]
		if !hasPlaceholder(m.Registry) {
			if err := authz.CheckURL("registry", m.Registry); err != nil {
				return d.WrapErr(err)
			}
		}
	case len(args) == 2 && args[0] == "file":
		m.File = args[1]
	default:
		return d.ArgErr()
	}
	return nil
}

// pooledMembership is one membership cache, shared by every config and site
// that asks the same registry about the same service with the same settings,
// so a reload keeps what it knows. Its goroutines (file polling, Redis
// invalidation) stop when the last user lets go.
type pooledMembership struct {
	cached  *cache.CachedMembership
	redis   *pooledRedis // the shared tier: nil without redis, and for a file source
	prefix  string
	cancel  context.CancelFunc
	service string
	http    *registry.HTTP // the source: one of http and file
	file    *registry.File
}

func (p *pooledMembership) Destruct() error {
	p.cancel()
	memberships.remove(p)
	if p.http != nil {
		liveBreakers.remove(p.http.Breaker())
	}
	return nil
}

// memberships lists the live membership caches of this process, for the
// admin endpoints (invalidation, health).
var memberships = newSet[*pooledMembership]()

// provisionMembership builds the membership check of the route: the source
// (HTTP registry or file) wrapped in the cache it shares with every route
// that asks the same source the same way. Its placeholders are resolved
// (resolvePlaceholders).
func (h *Handler) provisionMembership(ctx caddy.Context, rc *pooledRedis) (*authz.MembershipCheck, error) {
	m := h.Membership
	rule, err := m.validate()
	if err != nil {
		return nil, err
	}
	key := membershipPoolKey(m, h.Redis)
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		pm, err := h.newPooledMembership(ctx, rc)
		if err != nil {
			return nil, err
		}
		return pm, nil
	})
	if err != nil {
		return nil, err
	}
	h.poolKeys = append(h.poolKeys, key)
	return &authz.MembershipCheck{
		Service: m.Service,
		Rule:    rule,
		Source:  v.(*pooledMembership).cached,
		Clock:   authz.SystemClock,
	}, nil
}

// validate checks the membership block of the JSON config (the Caddyfile
// has checked what it could as it read) and returns its org rule.
func (m *MembershipConfig) validate() (authz.OrgRule, error) {
	if m.Service == "" {
		return "", errors.New("helseid: membership needs a service")
	}
	if err := m.checkSource(); err != nil {
		return "", fmt.Errorf("helseid: %w", err)
	}
	if m.Registry != "" {
		if err := authz.CheckURL("membership registry", m.Registry); err != nil {
			return "", fmt.Errorf("helseid: %w", err)
		}
	}
	rule, err := orgRule(m.Org)
	if err != nil {
		return "", fmt.Errorf("helseid: membership %w", err)
	}
	return rule, nil
}

// membershipPoolKey names the shared membership cache of m: the same
// source asked the same way, through the same Redis. The registry token is
// in it as a short hash, never in the clear.
func membershipPoolKey(m *MembershipConfig, r *cache.RedisConfig) string {
	tokenSum := sha256.Sum256([]byte(m.RegistryToken))
	return strings.Join([]string{"membership", m.Service, m.Registry, m.File, hex.EncodeToString(tokenSum[:8]),
		time.Duration(m.CacheTTL).String(), time.Duration(m.NegativeTTL).String(), time.Duration(m.StaleFor).String(),
		time.Duration(m.Timeout).String(), redisIdentity(r)}, "|")
}

// newPooledMembership builds the source and the cache in front of it. Its
// goroutines live on a context of their own, canceled by Destruct when the
// last user lets go.
func (h *Handler) newPooledMembership(ctx caddy.Context, rc *pooledRedis) (*pooledMembership, error) {
	m := h.Membership
	logger := h.logger.Named("membership")
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pm := &pooledMembership{cancel: cancel, service: m.Service}
	var (
		src          authz.Membership
		fetchTimeout time.Duration // the file source never waits: the default
		err          error
	)
	if m.File != "" {
		src, err = pm.openFile(mctx, m.File, logger)
	} else {
		src, fetchTimeout, err = pm.openRegistry(m, rc, logger)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	if pm.redis != nil {
		pm.prefix = h.Redis.Prefix()
	}
	pm.cached = cache.NewCachedMembership(src, pm.cacheOptions(mctx, m, fetchTimeout, logger))
	pm.start(mctx)
	memberships.add(pm)
	return pm, nil
}

// openFile opens the file source. A file is per-replica configuration,
// already in memory: no Redis tier in front of it, and a reload evicts the
// in-process tier so that a change is seen at once, not after cache_ttl.
func (pm *pooledMembership) openFile(mctx context.Context, path string, logger *zap.Logger) (authz.Membership, error) {
	f, err := registry.NewFile(path, authz.SystemClock, logger,
		registry.WithOnReload(func() { pm.cached.Invalidate(mctx, "", "") }))
	if err != nil {
		return nil, fmt.Errorf("helseid: membership file: %w", err)
	}
	pm.file = f
	return f, nil
}

// openRegistry builds the HTTP registry source, with Redis (rc, nil without
// it) as the shared tier, and returns how long a lookup waits for it.
func (pm *pooledMembership) openRegistry(m *MembershipConfig, rc *pooledRedis, logger *zap.Logger) (authz.Membership, time.Duration, error) {
	timeout := time.Duration(m.Timeout)
	if timeout <= 0 {
		timeout = registry.DefaultTimeout
	}
	pm.redis = rc
	hs, err := registry.NewHTTP(registry.HTTPConfig{
		BaseURL: m.Registry,
		Token:   m.RegistryToken,
		Timeout: time.Duration(m.Timeout),
		Breaker: cache.NewBreaker("registry", cache.WithStateChange(breakerChanged(logger))),
		Logger:  logger,
		Clock:   authz.SystemClock,
		OnCall:  getMetrics().registryCall,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("helseid: membership registry: %w", err)
	}
	pm.http = hs
	liveBreakers.add(hs.Breaker())
	return hs, cache.MembershipFetchTimeout(timeout, 0), nil
}

// cacheOptions are the options of pm's cache: m's lifetimes, pm's Redis
// tier when it has one, and the metrics.
func (pm *pooledMembership) cacheOptions(mctx context.Context, m *MembershipConfig, fetchTimeout time.Duration, logger *zap.Logger) cache.MembershipCacheOptions {
	metrics := getMetrics()
	opts := cache.MembershipCacheOptions{
		PositiveTTL:    time.Duration(m.CacheTTL),
		NegativeTTL:    time.Duration(m.NegativeTTL),
		StaleFor:       time.Duration(m.StaleFor),
		FetchTimeout:   fetchTimeout,
		Clock:          authz.SystemClock,
		Logger:         logger,
		Context:        mctx, // background refreshes end with the last user
		OnResult:       metrics.membershipResult,
		OnInvalidation: func(event string) { metrics.invalidations.WithLabelValues(event).Inc() },
	}
	if pm.redis != nil {
		opts.Redis = pm.redis.client
		opts.RedisBreaker = pm.redis.breaker
		opts.KeyPrefix = pm.prefix
	}
	return opts
}

// start starts pm's goroutines, once pm.cached is set (a file reload
// evicts it). Neither does Redis I/O now: the invalidation subscription
// starts on first use.
func (pm *pooledMembership) start(mctx context.Context) {
	if pm.redis != nil {
		pm.cached.SubscribeOnUse(mctx)
	}
	if pm.file != nil {
		pm.file.Start(mctx)
	}
}

func redisIdentity(r *cache.RedisConfig) string {
	if r == nil {
		return "local"
	}
	return r.PoolKey() + r.Prefix()
}

// breakerChanged logs a breaker's state change and counts it.
func breakerChanged(logger *zap.Logger) func(name string, from, to cache.BreakerState) {
	m := getMetrics()
	return func(name string, from, to cache.BreakerState) {
		m.breakerChanged(name, from, to)
		logger.Warn("circuit breaker changed state", zap.String("dependency", name), zap.String("from", string(from)), zap.String("to", string(to)))
	}
}
