package main

import (
	"bytes"
	"testing"
	"time"
)

// TestPrintRecovery pins the recovery section on a small outage: the first
// 200 per replica and route, the refusals before it, the valid 200s per
// second and the last refused request.
func TestPrintRecovery(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	o := outage{killed: t0, back: t0.Add(2 * time.Second)}
	at := func(d time.Duration) time.Time { return o.back.Add(d) }
	rec := func(rep int, route string, sent, done time.Duration, status int) *record {
		return &record{kind: kindValid, replica: rep, route: route, sent: at(sent), done: at(done), status: status}
	}
	recs := []*record{
		rec(0, routeDeny, -time.Second, -time.Second, 503), // before the PONG
		rec(0, routeDeny, 100*time.Millisecond, 150*time.Millisecond, 503),
		rec(0, routeDeny, 200*time.Millisecond, 250*time.Millisecond, 503),
		rec(0, routeDeny, 300*time.Millisecond, 900*time.Millisecond, 200),
		rec(0, routeDeny, 400*time.Millisecond, 500*time.Millisecond, 200), // answered first
		rec(1, routeDeny, 1500*time.Millisecond, 1600*time.Millisecond, 200),
		rec(0, routeLocal, 100*time.Millisecond, 200*time.Millisecond, 200),
		{kind: kindNonMember, replica: 1, route: routeLocal, sent: at(time.Second), done: at(time.Second), status: 200},
	}
	var b bytes.Buffer
	printRecovery(&b, recs, []outage{o}, 2)
	want := `
== recovery after each Redis restart (first 200 of a valid request sent after Redis answered PING again; time from that PONG to the 200's answer)
restart 1: SIGKILL 03:04:05.000, PONG 03:04:07.000 (2.00s down)
  r0 deny  first 200 after  0.500s (2 valid requests refused before it)
  r0 local first 200 after  0.200s (0 valid requests refused before it)
  r1 deny  first 200 after  1.600s (0 valid requests refused before it)
  r1 local no 200 after the restart
  deny  valid 200s per second after the PONG (both replicas): 2/4 1/1 0/0 0/0 0/0 0/0 0/0 0/0
  local valid 200s per second after the PONG (both replicas): 1/1 0/0 0/0 0/0 0/0 0/0 0/0 0/0
  deny  last valid request refused (503) sent 0.200s after the PONG
`
	if got := b.String(); got != want {
		t.Errorf("printRecovery:\n%s\nwant:\n%s", got, want)
	}
}
