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
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		key := name
		if key == "file" {
			key = "registry"
		}
		if seen[key] {
			return d.Errf("duplicate membership option %q", name)
		}
		seen[key] = true
		var err error
		switch name {
		case "registry":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1:
				m.Registry = args[0]
				if !hasPlaceholder(m.Registry) {
					if cerr := authz.CheckURL("registry", m.Registry); cerr != nil {
						return d.Err(cerr.Error())
					}
				}
			case len(args) == 2 && args[0] == "file":
				m.File = args[1]
			default:
				return d.ArgErr()
			}
		case "file":
			err = oneArg(d, &m.File)
		case "registry_token":
			err = oneArg(d, &m.RegistryToken)
		case "org":
			err = oneOf(d, &m.Org, "parent", "child", "both")
		case "cache_ttl":
			err = duration(d, &m.CacheTTL)
		case "negative_ttl":
			err = duration(d, &m.NegativeTTL)
		case "stale_for":
			err = duration(d, &m.StaleFor)
		case "timeout":
			err = duration(d, &m.Timeout)
		default:
			return d.Errf("unknown membership option %q", name)
		}
		if err != nil {
			return err
		}
	}
	if m.Registry == "" && m.File == "" {
		return d.Err("membership needs a registry <url> or a file <path>")
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
// (HTTP registry or file) wrapped in the shared cache.
func (h *Handler) provisionMembership(ctx caddy.Context, rc *pooledRedis) (*authz.MembershipCheck, error) {
	m := h.Membership
	repl := caddy.NewReplacer()
	for _, s := range []*string{&m.Service, &m.Registry, &m.File, &m.RegistryToken, &m.Org} {
		*s = repl.ReplaceKnown(*s, "")
	}
	if m.Service == "" {
		return nil, errors.New("helseid: membership needs a service")
	}
	if (m.Registry == "") == (m.File == "") {
		return nil, errors.New("helseid: membership needs exactly one of registry and file")
	}
	if m.Registry != "" {
		if err := authz.CheckURL("membership registry", m.Registry); err != nil {
			return nil, fmt.Errorf("helseid: %w", err)
		}
	}
	rule := authz.OrgRule(m.Org)
	switch rule {
	case "":
		rule = authz.OrgParent
	case authz.OrgParent, authz.OrgChild, authz.OrgBoth:
	default:
		return nil, fmt.Errorf("helseid: membership org must be parent, child or both, not %q", m.Org)
	}

	tokenSum := sha256.Sum256([]byte(m.RegistryToken))
	key := strings.Join([]string{"membership", m.Service, m.Registry, m.File, hex.EncodeToString(tokenSum[:8]),
		time.Duration(m.CacheTTL).String(), time.Duration(m.NegativeTTL).String(), time.Duration(m.StaleFor).String(),
		time.Duration(m.Timeout).String(), redisIdentity(h.Redis)}, "|")
	logger := h.logger.Named("membership")
	metrics := getMetrics()
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		var src authz.Membership
		mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		pm := &pooledMembership{cancel: cancel, service: m.Service}
		fetchTimeout := time.Duration(0) // the file source never waits: the default
		if m.File != "" {
			// A file is per-replica configuration, already in memory: no
			// Redis tier in front of it, and a reload evicts the in-process
			// tier so that a change is seen at once, not after cache_ttl.
			f, err := registry.NewFile(m.File, authz.SystemClock, logger,
				registry.WithOnReload(func() { pm.cached.Invalidate(mctx, "", "") }))
			if err != nil {
				cancel()
				return nil, fmt.Errorf("helseid: membership file: %w", err)
			}
			src, pm.file = f, f
		} else {
			timeout := time.Duration(m.Timeout)
			if timeout <= 0 {
				timeout = registry.DefaultTimeout
			}
			fetchTimeout = cache.MembershipFetchTimeout(timeout, 0)
			pm.redis = rc
			hs, err := registry.NewHTTP(registry.HTTPConfig{
				BaseURL: m.Registry,
				Token:   m.RegistryToken,
				Timeout: time.Duration(m.Timeout),
				Breaker: cache.NewBreaker("registry", cache.WithStateChange(breakerChanged(logger))),
				Logger:  logger,
				Clock:   authz.SystemClock,
				OnCall:  metrics.registryCall,
			})
			if err != nil {
				cancel()
				return nil, fmt.Errorf("helseid: membership registry: %w", err)
			}
			src, pm.http = hs, hs
			liveBreakers.add(hs.Breaker())
		}
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
			opts.KeyPrefix = h.Redis.Prefix()
			pm.prefix = opts.KeyPrefix
		}
		pm.cached = cache.NewCachedMembership(src, opts)
		if pm.redis != nil {
			pm.cached.SubscribeOnUse(mctx) // no Redis I/O in Provision
		}
		if pm.file != nil {
			pm.file.Start(mctx) // after pm.cached is set: its reloads evict it
		}
		memberships.add(pm)
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
