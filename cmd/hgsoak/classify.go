package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// kind is what a request is meant to test.
type kind string

const (
	kindValid       kind = "valid"        // a member, a fresh token-bound proof: should pass
	kindReplayOther kind = "replay_other" // a proof accepted earlier, sent to the other replica
	kindReplaySame  kind = "replay_same"  // a proof accepted earlier, sent to the same replica again
	kindNonMember   kind = "nonmember"    // a valid proof, an organization the registry does not know
	kindBadSig      kind = "bad_sig"      // a proof whose signature does not verify
	kindBadHTU      kind = "bad_htu"      // a proof signed for another URL
	kindExpired     kind = "expired"      // an expired access token
)

// allKinds are the kinds in report order.
var allKinds = []kind{kindValid, kindReplayOther, kindReplaySame, kindNonMember, kindBadSig, kindBadHTU, kindExpired}

// mustNotPass reports whether a 200 for k is a wrong 200.
func (k kind) mustNotPass() bool { return k != kindValid }

// isReplay reports whether k resends an accepted proof.
func (k kind) isReplay() bool { return k == kindReplayOther || k == kindReplaySame }

// Routes: the two sites of each replica, by their on_store_error mode.
const (
	routeDeny  = "deny"
	routeLocal = "local"
)

// Fault families of the schedule's phases; a phase's name starts with one.
const (
	famSteady   = "steady"
	famRedis    = "redis"    // Redis killed and started again empty
	famRegistry = "registry" // the registry proxy answers 503 or hangs
	famRotate   = "rotate"   // the issuer's signing key changed
	famIssuer   = "issuer"   // the issuer proxy refuses connections
)

// family returns the fault family of a phase name ("redis-quick" -> "redis").
func family(phase string) string {
	f, _, _ := strings.Cut(phase, "-")
	return f
}

// class is an observed answer: "200", or the status and the denial's reason
// from the audit log ("401 proof_replay"); when the audit entry was not
// found, the status and the body's error code ("503 temporarily_unavailable?").
// A transport failure is "ERR <what>".
func class(status int, reason, code string) string {
	switch {
	case status == 0:
		return "ERR " + code
	case status == 200:
		return "200"
	case reason != "":
		return fmt.Sprintf("%d %s", status, reason)
	case code != "":
		return fmt.Sprintf("%d %s?", status, code)
	}
	return fmt.Sprintf("%d", status)
}

// acceptable returns the answer classes that are correct for a request of
// kind k on route (routeDeny or routeLocal) sent during phase. Anything else
// is unexpected; a 200 outside the list for a kind that must not pass is a
// wrong 200.
func acceptable(k kind, route, phase string) []string {
	fam := family(phase)
	var ok []string
	add := func(c ...string) { ok = append(ok, c...) }

	// The replay check comes after the token and proof checks and before
	// membership: a Redis fault shows on every kind that gets that far.
	storeFaults := func() {
		if fam != famRedis {
			return
		}
		add("503 replay_store_recovering")
		if route == routeDeny {
			add("503 replay_store_unavailable")
		}
	}
	// A rotated key: a token with a kid the replica has not fetched yet is
	// refused until its refresh (at most one per 30 s per issuer).
	rotation := func() {
		if fam == famRotate {
			add("401 token_kid")
		}
	}
	switch k {
	case kindValid:
		add("200")
		storeFaults()
		rotation()
		if fam == famRegistry {
			add("503 registry_unavailable") // nothing cached younger than stale_for
		}
	case kindReplayOther, kindReplaySame:
		add("401 proof_replay")
		// After a loss the store refuses every proof issued before it; the
		// original was.
		add("503 replay_store_recovering")
		if fam == famRedis && route == routeDeny {
			add("503 replay_store_unavailable")
		}
		rotation()
	case kindNonMember:
		add("403 not_member")
		storeFaults()
		rotation()
		if fam == famRegistry {
			add("503 registry_unavailable")
		}
	case kindBadSig:
		add("401 proof_signature")
		rotation()
	case kindBadHTU:
		add("401 proof_htu")
		rotation()
	case kindExpired:
		add("401 token_expired")
		rotation()
	}
	return ok
}

// isAcceptable reports whether c is among acceptable(k, route, phase).
func isAcceptable(c string, k kind, route, phase string) bool {
	return slices.Contains(acceptable(k, route, phase), c)
}

// outage is one Redis outage as the soak saw it: from the SIGKILL to the
// first PONG of the new server.
type outage struct {
	killed, back time.Time
}

// fallbackGrace is how long after Redis answers PING again a replica may
// still be answering from its in-process store: its breaker probes 500 ms
// after it opened, and the probe itself takes up to the 250 ms call timeout;
// a second of slack on top.
const fallbackGrace = 2 * time.Second

// proofWindow is the gateway's acceptance window of a proof with the
// default dpop_max_age (15 s) and dpop_future_skew (5 s), plus a second: a
// replay entry lives this long, and a proof first used during an outage can
// be replayed within it.
const proofWindow = 21 * time.Second

// documentedException reports whether a 200 for a replay is the exception
// on_store_error local documents: on the local route, sent to the OTHER
// replica, of a proof first accepted during a Redis outage (while the
// replica answered from its in-process store), replayed within the proof's
// lifetime. Every other replay 200 is a bug.
func documentedException(k kind, route string, origSent, replaySent time.Time, outages []outage) bool {
	if k != kindReplayOther || route != routeLocal {
		return false
	}
	for _, o := range outages {
		if !origSent.Before(o.killed) && !origSent.After(o.back.Add(fallbackGrace)) &&
			replaySent.Sub(origSent) <= proofWindow {
			return true
		}
	}
	return false
}
