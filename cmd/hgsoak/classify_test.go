package main

import (
	"testing"
	"time"
)

func TestClass(t *testing.T) {
	for _, c := range []struct {
		status       int
		reason, code string
		want         string
	}{
		{200, "member", "", "200"},
		{401, "proof_replay", "invalid_dpop_proof", "401 proof_replay"},
		{503, "", "temporarily_unavailable", "503 temporarily_unavailable?"},
		{0, "", "connection refused", "ERR connection refused"},
		{502, "", "", "502"},
	} {
		if got := class(c.status, c.reason, c.code); got != c.want {
			t.Errorf("class(%d, %q, %q) = %q, want %q", c.status, c.reason, c.code, got, c.want)
		}
	}
}

func TestAcceptable(t *testing.T) {
	for _, c := range []struct {
		class        string
		k            kind
		route, phase string
		want         bool
	}{
		{"200", kindValid, routeDeny, famSteady, true},
		{"503 replay_store_unavailable", kindValid, routeDeny, phRedisQuick, true},
		{"503 replay_store_unavailable", kindValid, routeLocal, phRedisQuick, false}, // local falls back instead
		{"503 replay_store_recovering", kindValid, routeLocal, phRedisSlow, true},
		{"503 replay_store_unavailable", kindValid, routeDeny, famSteady, false},
		{"503 registry_unavailable", kindValid, routeDeny, phRegHang, true},
		{"503 registry_unavailable", kindValid, routeDeny, phIssuerDown, false},
		{"401 token_kid", kindValid, routeLocal, phRotSilent, true},
		{"401 token_kid", kindValid, routeLocal, phIssuerDown, false},
		{"200", kindReplayOther, routeDeny, phRedisQuick, false},
		{"200", kindReplaySame, routeLocal, phRedisSlow, false},
		{"200", kindNonMember, routeDeny, phReg503, false},
		{"200", kindBadSig, routeDeny, famSteady, false},
		{"401 proof_replay", kindReplayOther, routeLocal, famSteady, true},
		{"403 not_member", kindNonMember, routeLocal, phRegHang, true},
		{"401 proof_signature", kindBadSig, routeLocal, phRedisSlow, true},
		{"401 token_expired", kindExpired, routeDeny, famSteady, true},
		{"401 proof_htu", kindBadHTU, routeDeny, famSteady, true},
	} {
		if got := isAcceptable(c.class, c.k, c.route, c.phase); got != c.want {
			t.Errorf("isAcceptable(%q, %s, %s, %s) = %v, want %v", c.class, c.k, c.route, c.phase, got, c.want)
		}
	}
	// A 200 is acceptable for valid requests only, in every phase.
	for _, p := range []string{famSteady, phRedisQuick, phRedisSlow, phReg503, phRegHang, phRotAnnounce, phRotSilent, phIssuerDown} {
		for _, k := range allKinds {
			for _, rt := range []string{routeDeny, routeLocal} {
				if got := isAcceptable("200", k, rt, p); got != !k.mustNotPass() {
					t.Errorf("200 for %s on %s in %s: acceptable %v", k, rt, p, got)
				}
			}
		}
	}
}

func TestDocumentedException(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	outs := []outage{{killed: t0, back: t0.Add(8 * time.Second)}}
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for _, c := range []struct {
		name           string
		k              kind
		route          string
		orig, replayAt float64
		want           bool
	}{
		{"other replica, local, first used during the outage", kindReplayOther, routeLocal, 6, 7, true},
		{"first used just after PONG, breaker not yet closed", kindReplayOther, routeLocal, 9, 10, true},
		{"same replica is never excused", kindReplaySame, routeLocal, 6, 7, false},
		{"deny route is never excused", kindReplayOther, routeDeny, 6, 7, false},
		{"first used before the outage", kindReplayOther, routeLocal, -1, 1, false},
		{"first used well after the outage", kindReplayOther, routeLocal, 20, 21, false},
		{"replayed after the proof window", kindReplayOther, routeLocal, 6, 6 + 22, false},
	} {
		if got := documentedException(c.k, c.route, at(c.orig), at(c.replayAt), outs); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestJudgeCountsWrong200s(t *testing.T) {
	t0 := time.Now()
	outs := []outage{{killed: t0, back: t0.Add(8 * time.Second)}}
	recs := []*record{
		{kind: kindValid, route: routeDeny, phase: famSteady, status: 200, sent: t0},
		{kind: kindReplayOther, route: routeLocal, phase: phRedisSlow, status: 200, sent: t0.Add(7 * time.Second), origSent: t0.Add(6 * time.Second)},
		{kind: kindReplayOther, route: routeDeny, phase: phRedisSlow, status: 200, sent: t0.Add(7 * time.Second), origSent: t0.Add(6 * time.Second)},
		{kind: kindNonMember, route: routeDeny, phase: phReg503, status: 200, sent: t0},
		{kind: kindBadSig, route: routeDeny, phase: famSteady, status: 401, reason: "proof_signature", sent: t0},
		{kind: kindValid, route: routeDeny, phase: famSteady, status: 503, reason: "replay_store_unavailable", sent: t0},
	}
	v := judge(recs, outs)
	if len(v.wrong) != 2 || len(v.exceptions) != 1 || v.unexpected != 1 {
		t.Fatalf("wrong %d exceptions %d unexpected %d, want 2 1 1", len(v.wrong), len(v.exceptions), v.unexpected)
	}
}

func TestParseGoroutines(t *testing.T) {
	page := "# HELP go_goroutines Number of goroutines\n# TYPE go_goroutines gauge\ngo_goroutines 42\ngo_threads 9\n"
	if got := parseGoroutines(page); got != 42 {
		t.Fatalf("got %d, want 42", got)
	}
	if got := parseGoroutines("go_threads 9\n"); got != -1 {
		t.Fatalf("got %d, want -1", got)
	}
}
