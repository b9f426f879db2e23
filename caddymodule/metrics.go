package caddymodule

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/cache/registry"
)

// The Prometheus metrics of helsegate, caddy_helseid_*. Every label is from a
// closed set (an outcome, a reason code, a route name from the config, a cache
// tier and result, a call result, a dependency name): never an organization, a
// client, a key, a kid, an issuer URL or a path.
//
// The collectors are created once per process and registered in the metrics
// registry of every config that provisions a helseid handler (Caddy makes a
// new registry per config load), so counters survive reloads. The children of
// the request path are resolved once, here, so that counting a request is a
// map lookup and an atomic add, without allocating.

const (
	metricsNamespace = "caddy"
	metricsSubsystem = "helseid"
)

// Outcomes of a request: the value of the outcome label.
const (
	outcomeAllow = "allow"
	outcomeDeny  = "deny"  // the caller's fault: 400, 401, 403
	outcomeError = "error" // a dependency failed: 503
)

// outcomeOf is the outcome of a denial of class k.
func outcomeOf(k authz.DenialClass) string {
	if k == authz.Unavailable {
		return outcomeError
	}
	return outcomeDeny
}

// defaultRoute is the route label of a handler with neither a route name nor
// a membership service.
const defaultRoute = "default"

// durationBuckets spans a cached token with a fresh proof (~100 µs) to a
// registry call near its timeout.
var durationBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
}

// reasonMetrics are the pre-resolved series of one (outcome, reason).
type reasonMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
	replay   bool // a replay detection: counts in replays_total too
}

type tierResult struct{ tier, result string }

type helseidMetrics struct {
	requests           *prometheus.CounterVec
	duration           *prometheus.HistogramVec
	membership         *prometheus.CounterVec
	registryCalls      *prometheus.CounterVec
	jwksRefreshes      *prometheus.CounterVec
	replays            prometheus.Counter
	replayFallbacks    prometheus.Counter
	replayLosses       *prometheus.CounterVec
	invalidations      *prometheus.CounterVec
	breakerTransitions *prometheus.CounterVec
	breakerState       *breakerCollector
	jwksState          *jwksCollector

	// The decision series of each route, resolved when a handler of that
	// route is provisioned (see forRoute).
	routesMu sync.Mutex
	routes   map[string]*routeMetrics

	// Pre-resolved children. Written once in init, read-only after.
	membershipChild map[tierResult]prometheus.Counter
	registryChild   map[string]prometheus.Counter
	jwksOK, jwksErr prometheus.Counter
}

var (
	metricsOnce sync.Once
	hgMetrics   *helseidMetrics
)

// getMetrics returns the process's collectors, creating them the first time.
func getMetrics() *helseidMetrics {
	metricsOnce.Do(func() { hgMetrics = newHelseidMetrics() })
	return hgMetrics
}

func newHelseidMetrics() *helseidMetrics {
	m := &helseidMetrics{
		requests: counterVec("requests_total",
			"Decisions of the helseid handler, by outcome (allow, deny, error), reason code and route (the handler's route name or membership service).",
			"outcome", "reason", "route"),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "verification_duration_seconds",
			Help:    "Time from the request entering the helseid handler to its decision (token, proof, replay, membership), by outcome and route.",
			Buckets: durationBuckets,
		}, []string{"outcome", "route"}),
		membership: counterVec("membership_cache_results_total",
			"Membership lookups per cache tier (local, redis, registry) and result (hit, miss, stale, error).", "tier", "result"),
		registryCalls: counterVec("registry_calls_total",
			"Calls of the membership registry (HTTP contract v1), by result.", "result"),
		jwksRefreshes: counterVec("jwks_refreshes_total",
			"Fetches of an issuer's key set (discovery included), by result (ok, error).", "result"),
		replays: counter("replays_total",
			"DPoP proofs refused because they were used before."),
		replayFallbacks: counter("replay_store_fallbacks_total",
			"Replay checks answered by the in-process store because Redis failed (on_store_error local)."),
		replayLosses: counterVec("replay_store_losses_total",
			"Times a shard of the Redis replay store raised its floor because records may have been lost, by why (restarted, server_changed, marker_gone, marker_older, declared_elsewhere).", "why"),
		invalidations: counterVec("membership_invalidations_total",
			"Events of the membership invalidation subscriber (applied, malformed, resubscribed).", "event"),
		breakerTransitions: counterVec("breaker_transitions_total",
			"Circuit breaker state changes, by dependency (redis, registry) and new state.", "dependency", "to"),
		breakerState: &breakerCollector{desc: metricDesc("breaker_state",
			"Circuit breaker state per dependency (redis, registry): 0 closed, 1 half-open, 2 open; the worst of the live breakers.", "dependency")},
		jwksState: &jwksCollector{
			age: metricDesc("jwks_age_seconds",
				"Seconds since the last successful fetch of the oldest live issuer key set (issuers not fetched yet are left out)."),
			failing: metricDesc("jwks_failing_issuers",
				"Live issuers whose last key-set fetch failed (serving the last good set, or none: the health report's degraded and down)."),
		},
		routes: map[string]*routeMetrics{},
	}
	m.forRoute(defaultRoute)
	m.resolveChildren()
	m.createSeries()
	return m
}

// metricOpts, counter, counterVec and metricDesc name a metric
// caddy_helseid_<name>.
func metricOpts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts(metricOpts(name, help)))
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts(metricOpts(name, help)), labels)
}

func metricDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, name), help, labels, nil)
}

// resolveChildren resolves the children counted on the request path and
// by the membership cache, so that counting is a map lookup.
func (m *helseidMetrics) resolveChildren() {
	m.membershipChild = map[tierResult]prometheus.Counter{}
	for _, tr := range []tierResult{
		{cache.TierLocal, cache.ResultHit}, {cache.TierLocal, cache.ResultMiss},
		{cache.TierRedis, cache.ResultHit}, {cache.TierRedis, cache.ResultMiss}, {cache.TierRedis, cache.ResultError},
		{cache.TierRegistry, cache.ResultHit}, {cache.TierRegistry, cache.ResultStale}, {cache.TierRegistry, cache.ResultError},
	} {
		m.membershipChild[tr] = m.membership.WithLabelValues(tr.tier, tr.result)
	}
	m.registryChild = map[string]prometheus.Counter{}
	for _, r := range []string{registry.CallOK, registry.CallNotFound, registry.CallRefused, registry.CallError,
		registry.CallBreakerOpen, registry.CallCanceled} {
		m.registryChild[r] = m.registryCalls.WithLabelValues(r)
	}
	m.jwksOK = m.jwksRefreshes.WithLabelValues("ok")
	m.jwksErr = m.jwksRefreshes.WithLabelValues("error")
}

// createSeries creates the series of the rare events at 0 from the start,
// so that increase() over them is right from the first event and an alert
// on them names series that exist.
func (m *helseidMetrics) createSeries() {
	for _, e := range []string{cache.InvalidationApplied, cache.InvalidationMalformed, cache.InvalidationResubscribed} {
		_ = m.invalidations.WithLabelValues(e)
	}
	for _, why := range []string{cache.LossRestarted, cache.LossServerChanged, cache.LossMarkerGone,
		cache.LossMarkerOlder, cache.LossDeclaredElsewhere} {
		_ = m.replayLosses.WithLabelValues(why)
	}
	for _, dep := range []string{"redis", "registry"} {
		for _, to := range []cache.BreakerState{cache.BreakerClosed, cache.BreakerHalfOpen, cache.BreakerOpen} {
			_ = m.breakerTransitions.WithLabelValues(dep, string(to))
		}
	}
}

// routeMetrics are the decision series of one route.
type routeMetrics struct {
	m        *helseidMetrics
	route    string
	byReason map[string]map[string]reasonMetrics // outcome -> reason -> series; read-only once built
}

// forRoute returns the decision series of route, creating every (outcome,
// reason) series of it the first time: a route's series all show from its
// first config load, at 0. The routes are the config's names, so the set is
// bounded by the config; a route dropped by a reload keeps its series (at
// their last values) until the process ends, as counters should.
func (m *helseidMetrics) forRoute(route string) *routeMetrics {
	m.routesMu.Lock()
	defer m.routesMu.Unlock()
	if rm, ok := m.routes[route]; ok {
		return rm
	}
	rm := &routeMetrics{m: m, route: route,
		byReason: map[string]map[string]reasonMetrics{outcomeAllow: {}, outcomeDeny: {}, outcomeError: {}}}
	resolve := func(outcome, reason string) reasonMetrics {
		return reasonMetrics{
			requests: m.requests.WithLabelValues(outcome, reason, route),
			duration: m.duration.WithLabelValues(outcome, route),
			replay:   reason == "proof_replay",
		}
	}
	for _, o := range []string{outcomeAllow, outcomeDeny, outcomeError} {
		_ = m.duration.WithLabelValues(o, route)
	}
	for _, r := range authz.AllowReasons() {
		rm.byReason[outcomeAllow][r.Code] = resolve(outcomeAllow, r.Code)
	}
	for _, r := range authz.DenialReasons() {
		o := outcomeOf(r.Class)
		rm.byReason[o][r.Code] = resolve(o, r.Code)
	}
	m.routes[route] = rm
	return rm
}

// collectors lists what register puts in a registry.
func (m *helseidMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.requests, m.duration, m.membership, m.registryCalls, m.jwksRefreshes, m.replays,
		m.replayFallbacks, m.replayLosses, m.invalidations, m.breakerTransitions, m.breakerState, m.jwksState,
	}
}

// registerMetrics registers the collectors in reg (a config's registry). A
// collector already there (a second helseid handler in the same config) is
// fine.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range getMetrics().collectors() {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			return err
		}
	}
	return nil
}

// decided counts one decision of the route. reason is a code of the closed
// list; a code outside it (a bug) is still counted, through the slower
// labelled path.
func (r *routeMetrics) decided(outcome, reason string, elapsed time.Duration) {
	rm, ok := r.byReason[outcome][reason]
	if !ok {
		r.m.requests.WithLabelValues(outcome, reason, r.route).Inc()
		r.m.duration.WithLabelValues(outcome, r.route).Observe(elapsed.Seconds())
		return
	}
	rm.requests.Inc()
	rm.duration.Observe(elapsed.Seconds())
	if rm.replay {
		r.m.replays.Inc()
	}
}

// membershipResult is cache.MembershipCacheOptions.OnResult.
func (m *helseidMetrics) membershipResult(tier, result string) {
	if c, ok := m.membershipChild[tierResult{tier, result}]; ok {
		c.Inc()
		return
	}
	m.membership.WithLabelValues(tier, result).Inc()
}

// registryCall is registry.HTTPConfig.OnCall.
func (m *helseidMetrics) registryCall(result string) {
	if c, ok := m.registryChild[result]; ok {
		c.Inc()
		return
	}
	m.registryCalls.WithLabelValues(result).Inc()
}

// jwksRefresh is authz.NewIssuerKeys's onRefresh.
func (m *helseidMetrics) jwksRefresh(ok bool) {
	if ok {
		m.jwksOK.Inc()
	} else {
		m.jwksErr.Inc()
	}
}

// breakerChanged is cache.WithStateChange's function, for the transitions.
func (m *helseidMetrics) breakerChanged(name string, _, to cache.BreakerState) {
	m.breakerTransitions.WithLabelValues(name, string(to)).Inc()
}

// breakerCollector reports caddy_helseid_breaker_state at scrape time: for
// each dependency name, the worst state of the live breakers of that name.
type breakerCollector struct {
	desc *prometheus.Desc
}

func (c *breakerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *breakerCollector) Collect(ch chan<- prometheus.Metric) {
	worst := map[string]float64{}
	for _, b := range liveBreakers.list() {
		v := breakerStateValue(b.State())
		if cur, ok := worst[b.Name()]; !ok || v > cur {
			worst[b.Name()] = v
		}
	}
	for name, v := range worst {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, name)
	}
}

// jwksCollector reports the key sets' state at scrape time, over the live
// issuer key sources, without an issuer label (an issuer URL is no label):
// the health report names the issuer.
type jwksCollector struct {
	age, failing *prometheus.Desc
}

func (c *jwksCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.age
	ch <- c.failing
}

func (c *jwksCollector) Collect(ch chan<- prometheus.Metric) {
	keys := liveKeys.list()
	if len(keys) == 0 {
		return
	}
	sts := make([]authz.KeyStatus, len(keys))
	for i, k := range keys {
		sts[i] = k.Status()
	}
	age, fetched, failing := jwksGauges(sts, time.Now())
	if fetched {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	}
	ch <- prometheus.MustNewConstMetric(c.failing, prometheus.GaugeValue, float64(failing))
}

// jwksGauges is the age in seconds of the oldest key set fetched (fetched
// false: none was) and the number of issuers whose last fetch failed.
func jwksGauges(sts []authz.KeyStatus, now time.Time) (age float64, fetched bool, failing int) {
	var oldest time.Time
	for _, st := range sts {
		if !st.LastSuccess.IsZero() && (oldest.IsZero() || st.LastSuccess.Before(oldest)) {
			oldest = st.LastSuccess
		}
		if !st.LastFailure.IsZero() && st.LastFailure.After(st.LastSuccess) {
			failing++
		}
	}
	if oldest.IsZero() {
		return 0, false, failing
	}
	return now.Sub(oldest).Seconds(), true, failing
}

// breakerStateValue is the gauge value of a breaker state.
func breakerStateValue(state cache.BreakerState) float64 {
	switch state {
	case cache.BreakerOpen:
		return 2
	case cache.BreakerHalfOpen:
		return 1
	default:
		return 0
	}
}

// liveBreakers lists the breakers of the live pooled Redis clients and
// registry sources.
var liveBreakers = newSet[*cache.Breaker]()
