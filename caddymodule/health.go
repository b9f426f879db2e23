package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/helsegate/helsegate/cache"
)

// set is a set of the live pooled objects of this process. The admin
// endpoints and the breaker gauge read it; the pool's constructors add to it
// and the destructors remove.
type set[T comparable] struct {
	mu sync.Mutex
	m  map[T]struct{}
}

func newSet[T comparable]() *set[T] { return &set[T]{m: map[T]struct{}{}} }

func (s *set[T]) add(v T) {
	s.mu.Lock()
	s.m[v] = struct{}{}
	s.mu.Unlock()
}

func (s *set[T]) remove(v T) {
	s.mu.Lock()
	delete(s.m, v)
	s.mu.Unlock()
}

func (s *set[T]) list() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]T, 0, len(s.m))
	for v := range s.m {
		out = append(out, v)
	}
	return out
}

// The live key sources and Redis clients (memberships: see membership.go).
var (
	liveKeys  = newSet[*pooledKeys]()
	liveRedis = newSet[*pooledRedis]()
)

// healthPingTimeout bounds the PING of each Redis.
const healthPingTimeout = 200 * time.Millisecond

// Health statuses. A report's status is its worst part's: "down" answers 503.
const (
	healthOK       = "ok"
	healthPending  = "pending"  // issuer keys not fetched yet (no request so far): not a failure
	healthDegraded = "degraded" // still serving: keys from the last good set, a breaker half-open or open while Redis answers PING
	healthDown     = "down"
)

// healthReport is the body of GET /helseid/health. It holds no secret: no
// token, no password, no URL with credentials, no organization.
type healthReport struct {
	Status     string           `json:"status"`
	Time       time.Time        `json:"time"`
	Issuers    []issuerHealth   `json:"issuers"`
	Redis      []redisHealth    `json:"redis"`
	Registries []registryHealth `json:"registries"`
}

type issuerHealth struct {
	Issuer      string     `json:"issuer"`
	Status      string     `json:"status"`
	LastSuccess *time.Time `json:"jwks_last_success,omitempty"`
	AgeSeconds  *float64   `json:"jwks_age_seconds,omitempty"`
	LastFailure *time.Time `json:"jwks_last_failure,omitempty"`
	Keys        int        `json:"keys"`
}

type redisHealth struct {
	Addrs       []string           `json:"addrs"`
	Status      string             `json:"status"`
	Breaker     cache.BreakerState `json:"breaker"`
	Ping        string             `json:"ping"`
	PingMillis  float64            `json:"ping_ms"`
	Error       string             `json:"error,omitempty"`
	LastSuccess *time.Time         `json:"last_success,omitempty"`
	LastFailure *time.Time         `json:"last_failure,omitempty"`
}

type registryHealth struct {
	Service     string             `json:"service"`
	Source      string             `json:"source"` // "http" or "file"
	URL         string             `json:"url,omitempty"`
	Path        string             `json:"path,omitempty"`
	Status      string             `json:"status"`
	Breaker     cache.BreakerState `json:"breaker,omitempty"`
	LastSuccess *time.Time         `json:"last_success,omitempty"`
	AgeSeconds  *float64           `json:"age_seconds,omitempty"`
	LastFailure *time.Time         `json:"last_failure,omitempty"`
}

// health answers GET /helseid/health: 200 when nothing is down, 503 when
// something is, with the report as JSON either way.
func (a *adminAPI) health(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	rep := buildHealth(r.Context(), time.Now())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if rep.Status == healthDown {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if r.Method == http.MethodHead {
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// buildHealth looks at every live issuer key source, Redis client and
// membership source of the process. It pings each Redis (concurrently, each
// within healthPingTimeout) and does no other I/O.
func buildHealth(ctx context.Context, now time.Time) healthReport {
	rep := healthReport{Time: now.UTC(),
		Issuers: issuersHealth(now), Redis: redisesHealth(ctx), Registries: registriesHealth(now)}
	rep.Status = healthOK
	for _, s := range rep.statuses() {
		if rank(s) > rank(rep.Status) {
			rep.Status = s
		}
	}
	sort.Slice(rep.Issuers, func(i, j int) bool { return rep.Issuers[i].Issuer < rep.Issuers[j].Issuer })
	sort.Slice(rep.Redis, func(i, j int) bool { return fmt.Sprint(rep.Redis[i].Addrs) < fmt.Sprint(rep.Redis[j].Addrs) })
	sort.Slice(rep.Registries, func(i, j int) bool {
		a, b := rep.Registries[i], rep.Registries[j]
		return a.Service+"|"+a.URL+a.Path < b.Service+"|"+b.URL+b.Path
	})
	return rep
}

// statuses are the statuses of the report's parts.
func (rep *healthReport) statuses() []string {
	var out []string
	for _, h := range rep.Issuers {
		out = append(out, h.Status)
	}
	for _, h := range rep.Redis {
		out = append(out, h.Status)
	}
	for _, h := range rep.Registries {
		out = append(out, h.Status)
	}
	return out
}

// issuersHealth reports the live issuer key sources.
func issuersHealth(now time.Time) []issuerHealth {
	out := []issuerHealth{}
	for _, k := range liveKeys.list() {
		st := k.Status()
		ih := issuerHealth{Issuer: withoutUserinfo(st.Issuer), Keys: st.Keys}
		if !st.LastSuccess.IsZero() {
			ih.LastSuccess = timePtr(st.LastSuccess)
			ih.AgeSeconds = ageSeconds(now, st.LastSuccess)
		}
		if !st.LastFailure.IsZero() {
			ih.LastFailure = timePtr(st.LastFailure)
		}
		switch {
		case st.LastSuccess.IsZero() && st.LastFailure.IsZero():
			ih.Status = healthPending
		case st.LastSuccess.IsZero():
			ih.Status = healthDown // requests get 503 jwks_unavailable
		case st.LastFailure.After(st.LastSuccess):
			ih.Status = healthDegraded // the last good set keeps serving
		default:
			ih.Status = healthOK
		}
		out = append(out, ih)
	}
	return out
}

// redisesHealth pings the live Redis clients, all at once.
func redisesHealth(ctx context.Context) []redisHealth {
	rediss := liveRedis.list()
	out := make([]redisHealth, len(rediss))
	var wg sync.WaitGroup
	for i, pr := range rediss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = redisStatus(ctx, pr)
		}()
	}
	wg.Wait()
	return out
}

// registriesHealth reports the live membership sources.
func registriesHealth(now time.Time) []registryHealth {
	out := []registryHealth{}
	for _, pm := range memberships.list() {
		switch {
		case pm.http != nil:
			out = append(out, httpRegistryHealth(pm, now))
		case pm.file != nil:
			t := pm.file.LoadedAt()
			out = append(out, registryHealth{Service: pm.service, Source: "file", Path: pm.file.Path(), Status: healthOK,
				LastSuccess: timePtr(t), AgeSeconds: ageSeconds(now, t)})
		}
	}
	return out
}

// httpRegistryHealth reports an HTTP registry by its breaker.
func httpRegistryHealth(pm *pooledMembership, now time.Time) registryHealth {
	br := pm.http.Breaker()
	rh := registryHealth{Service: pm.service, Source: "http", URL: withoutUserinfo(pm.http.BaseURL()), Breaker: br.State()}
	if t := br.LastSuccess(); !t.IsZero() {
		rh.LastSuccess = timePtr(t)
		rh.AgeSeconds = ageSeconds(now, t)
	}
	if t := br.LastFailure(); !t.IsZero() {
		rh.LastFailure = timePtr(t)
	}
	switch rh.Breaker {
	case cache.BreakerOpen:
		rh.Status = healthDown
	case cache.BreakerHalfOpen:
		rh.Status = healthDegraded
	default:
		rh.Status = healthOK
	}
	return rh
}

// redisStatus pings one Redis, directly (not through its breaker: the probe
// must neither be refused by an open breaker nor count towards it).
func redisStatus(ctx context.Context, pr *pooledRedis) redisHealth {
	rh := redisHealth{Addrs: pr.addrs, Breaker: pr.breaker.State()}
	if t := pr.breaker.LastSuccess(); !t.IsZero() {
		rh.LastSuccess = timePtr(t)
	}
	if t := pr.breaker.LastFailure(); !t.IsZero() {
		rh.LastFailure = timePtr(t)
	}
	pctx, cancel := context.WithTimeout(ctx, healthPingTimeout)
	defer cancel()
	start := time.Now()
	err := pr.client.Ping(pctx).Err()
	rh.PingMillis = float64(time.Since(start).Microseconds()) / 1000
	switch {
	case err != nil:
		rh.Ping, rh.Status = "error", healthDown
		rh.Error = pr.redact(err).Error()
	case rh.Breaker != cache.BreakerClosed:
		rh.Ping, rh.Status = "ok", healthDegraded
	default:
		rh.Ping, rh.Status = "ok", healthOK
	}
	return rh
}

func rank(status string) int {
	switch status {
	case healthDown:
		return 2
	case healthDegraded:
		return 1
	default:
		return 0
	}
}

// withoutUserinfo drops user:password@ from a URL, should one carry it.
func withoutUserinfo(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}

func timePtr(t time.Time) *time.Time {
	t = t.UTC()
	return &t
}

// ageSeconds is how long before now t was, in seconds, never below zero. The
// report's time is taken before the Redis pings, and a registry call or a
// file reload can succeed while they run; the times the sources keep carry
// no monotonic reading either, so a wall clock stepped back makes them seem
// to come after now. Neither is an age below zero.
func ageSeconds(now, t time.Time) *float64 {
	s := max(now.Sub(t), 0).Round(time.Millisecond).Seconds()
	return &s
}
