package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// phaseSpan is when a phase actually ran, for the report.
type phaseSpan struct {
	name       string
	start, end time.Time
	note       string
}

// faults applies the schedule to the soak's Redis, proxies and simulator.
type faults struct {
	redis    *redisProc
	registry *faultProxy
	issuer   *faultProxy
	sim      *helseidsim.Server
	logf     func(format string, a ...any)

	current atomic.Pointer[string]

	mu      sync.Mutex
	outages []outage
	spans   []phaseSpan
	kids    []string // every kid the simulator signed with, oldest first
}

// phase returns the phase now in force.
func (f *faults) phase() string {
	if p := f.current.Load(); p != nil {
		return *p
	}
	return famSteady
}

func (f *faults) setPhase(p string) { f.current.Store(&p) }

// run applies steps, each at start+At, until they are done or ctx ends.
// Whatever happens, the proxies answer normally again when it returns.
func (f *faults) run(ctx context.Context, start time.Time, steps []step) error {
	defer f.registry.setMode(modePass)
	defer func() { _ = f.issuer.up() }()
	for _, s := range steps {
		if !sleepUntil(ctx, start.Add(s.At)) {
			return nil
		}
		span := phaseSpan{name: s.Phase, start: time.Now()}
		f.setPhase(s.Phase)
		f.logf("phase %s begins; acceptable: %s", s.Phase, acceptableLine(s.Phase))
		note, err := f.apply(ctx, s)
		span.note = note
		if err != nil {
			return fmt.Errorf("fault %s: %w", s.Phase, err)
		}
		if note != "" {
			f.logf("phase %s: %s", s.Phase, note)
		}
		sleepUntil(ctx, time.Now().Add(s.Settle))
		span.end = time.Now()
		f.mu.Lock()
		f.spans = append(f.spans, span)
		f.mu.Unlock()
		f.setPhase(famSteady)
		f.logf("phase %s ends", s.Phase)
	}
	return nil
}

// apply starts and (after For) ends one fault; it returns a note for the report.
func (f *faults) apply(ctx context.Context, s step) (string, error) {
	switch s.Phase {
	case phRedisQuick, phRedisSlow:
		killed := time.Now()
		f.redis.kill()
		sleepUntil(ctx, killed.Add(s.For))
		back, err := f.redis.start()
		if err != nil {
			return "", err
		}
		f.mu.Lock()
		f.outages = append(f.outages, outage{killed: killed, back: back})
		f.mu.Unlock()
		return fmt.Sprintf("SIGKILL at %s, PONG again at %s (%.2fs down, empty)",
			killed.Format("15:04:05.000"), back.Format("15:04:05.000"), back.Sub(killed).Seconds()), nil
	case phReg503:
		f.registry.setMode(mode503)
		sleepUntil(ctx, time.Now().Add(s.For))
		f.registry.setMode(modePass)
	case phRegHang:
		f.registry.setMode(modeHang)
		sleepUntil(ctx, time.Now().Add(s.For))
		f.registry.setMode(modePass)
	case phRotAnnounce:
		// The simulator's Rotate: a new kid signs new tokens, the old key
		// stays in the JWKS.
		kid, err := f.sim.Rotate()
		if err != nil {
			return "", err
		}
		f.addKid(kid)
		return "new kid " + short(kid) + ", old keys still published", nil
	case phRotSilent:
		// Rotate, then Retire every earlier key at once: the JWKS holds only
		// the new key.
		kid, err := f.sim.Rotate()
		if err != nil {
			return "", err
		}
		old := f.addKid(kid)
		for _, k := range old {
			f.sim.Retire(k)
		}
		return fmt.Sprintf("new kid %s, retired %d old key(s) at once", short(kid), len(old)), nil
	case phIssuerDown:
		f.issuer.down()
		sleepUntil(ctx, time.Now().Add(s.For))
		if err := f.issuer.up(); err != nil {
			return "", err
		}
	}
	return "", nil
}

// addKid records a new kid and returns the earlier ones.
func (f *faults) addKid(kid string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := append([]string(nil), f.kids...)
	f.kids = append(f.kids, kid)
	return old
}

// snapshot returns the outages and phase spans so far.
func (f *faults) snapshot() ([]outage, []phaseSpan) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]outage(nil), f.outages...), append([]phaseSpan(nil), f.spans...)
}

// acceptableLine summarises acceptable() for a phase, per kind and route.
func acceptableLine(phase string) string {
	var parts []string
	for _, k := range allKinds {
		d := strings.Join(acceptable(k, routeDeny, phase), ", ")
		l := strings.Join(acceptable(k, routeLocal, phase), ", ")
		if d == l {
			parts = append(parts, fmt.Sprintf("%s: %s", k, d))
		} else {
			parts = append(parts, fmt.Sprintf("%s: deny {%s} local {%s}", k, d, l))
		}
	}
	return strings.Join(parts, "; ")
}

// sleepUntil sleeps until t or until ctx ends; it reports whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// short abbreviates a kid.
func short(kid string) string {
	if len(kid) > 8 {
		return kid[:8] + "…"
	}
	return kid
}
