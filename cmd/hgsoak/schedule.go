package main

import (
	"errors"
	"fmt"
	"time"
)

// step is one fault of the schedule: at At (from the start of the load) the
// fault begins, it lasts For (0 for an instant fault such as a key rotation
// or a quick Redis restart), and the phase keeps its name for Settle after
// the fault ends, since its effects outlive it (cached decisions, the proof
// window, the unknown-kid refresh interval).
type step struct {
	Phase  string
	At     time.Duration
	For    time.Duration
	Settle time.Duration
}

// End is when the step's phase ends (fault plus settle).
func (s step) End() time.Duration { return s.At + s.For + s.Settle }

// Fixed timings that do not scale with the duration: they follow the
// gateway's own constants, not the length of the soak.
const (
	// redisSlowDown is how long Redis stays down in the slow restart: longer
	// than dpop_future_skew (5 s), so that on_store_error local starts
	// accepting proofs issued after Redis began failing and the documented
	// exception can occur.
	redisSlowDown = 8 * time.Second
	// redisSettle covers the proof window (21 s) after Redis is back: proofs
	// issued before the loss are refused as replay_store_recovering until
	// they would be too old anyway.
	redisSettle = 25 * time.Second
	// rotateSettle is a little more than the gateway's unknown-kid refresh
	// interval (30 s), within which a replica may refuse a new kid.
	rotateSettle = 35 * time.Second
	// registrySettle covers stale_for (20 s) of the generated config: once
	// the registry answers again, every cached decision is fresh within it.
	registrySettle = 10 * time.Second
	// issuerSettle: nothing the gateway caches depends on the issuer being
	// up, except a refresh that failed during the outage.
	issuerSettle = 5 * time.Second
	// minRotateGap keeps two rotations further apart than the unknown-kid
	// refresh interval (30 s), so that each new kid is fetched at its first
	// use and a valid request needs no retry.
	minRotateGap = 31 * time.Second
	// minDuration is the shortest soak whose scaled schedule still fits.
	minDuration = 5 * time.Minute
)

// Phase names.
const (
	phRedisQuick  = "redis-quick"
	phRedisSlow   = "redis-slow"
	phReg503      = "registry-503"
	phRegHang     = "registry-hang"
	phRotAnnounce = "rotate-announced"
	phRotSilent   = "rotate-unannounced"
	phIssuerDown  = "issuer-down"
)

// plan returns the fault schedule for a soak of d: the starts and the
// registry and issuer outages scale with d (at fractions of a 6-minute
// run), the rest follows the fixed timings above. It fails when d is too
// short for the phases to stay apart.
func plan(d time.Duration) ([]step, error) {
	if d < minDuration {
		return nil, fmt.Errorf("duration %s is below %s: the fault phases would overlap", d, minDuration)
	}
	at := func(f float64) time.Duration { return time.Duration(f * float64(d)).Round(time.Second) }
	// Outages of the registry and the issuer: 7 % of the run each, at least
	// 10 s, so that cached decisions expire (cache_ttl 5 s) and the
	// registry breaker opens (5 failures) during each.
	outageLen := max(10*time.Second, at(0.07))
	steps := []step{
		{Phase: phRedisQuick, At: at(0.08), Settle: redisSettle},
		{Phase: phReg503, At: at(0.20), For: outageLen},
		{Phase: phRegHang, At: at(0.20) + outageLen, For: outageLen, Settle: registrySettle},
		{Phase: phRotAnnounce, At: at(0.40), Settle: rotateSettle},
		{Phase: phRedisSlow, At: at(0.52), For: redisSlowDown, Settle: redisSettle},
		{Phase: phRotSilent, At: at(0.64), Settle: rotateSettle},
		{Phase: phIssuerDown, At: at(0.78), For: outageLen, Settle: issuerSettle},
	}
	return steps, checkPlan(steps, d)
}

// checkPlan verifies that phases do not overlap, that rotations are far
// enough apart, and that every phase ends before the run does.
func checkPlan(steps []step, d time.Duration) error {
	var lastRotate time.Duration = -minRotateGap
	for i, s := range steps {
		if i > 0 && s.At < steps[i-1].End() {
			return fmt.Errorf("phase %s (at %s) overlaps %s (until %s)", s.Phase, s.At, steps[i-1].Phase, steps[i-1].End())
		}
		if family(s.Phase) == famRotate {
			if s.At-lastRotate < minRotateGap {
				return fmt.Errorf("rotation %s at %s is within %s of the previous one", s.Phase, s.At, minRotateGap)
			}
			lastRotate = s.At
		}
	}
	if len(steps) > 0 && steps[len(steps)-1].End() > d {
		return errors.New("the last phase ends after the run")
	}
	return nil
}
