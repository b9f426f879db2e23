package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/helsegate/helsegate/cache"
)

// getHealth calls the admin route's handler.
func getHealth(t *testing.T) (int, healthReport) {
	t.Helper()
	w := httptest.NewRecorder()
	if err := (&adminAPI{}).health(w, httptest.NewRequest("GET", "/helseid/health", nil)); err != nil {
		t.Fatal(err)
	}
	var rep healthReport
	if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	return w.Code, rep
}

// An issuer whose keys could never be fetched is down; a registry whose
// breaker opened is down; either answers 503.
func TestHealthIssuerAndRegistryDown(t *testing.T) {
	deadRegistry := "http://" + deadAddr(t)
	f := newHandlerFixture(t, func(h *Handler) {
		h.Membership = &MembershipConfig{Service: testService, Registry: deadRegistry, Timeout: caddy.Duration(100 * time.Millisecond)}
	})
	observe(f.h)
	if code, rep := getHealth(t); code != http.StatusOK || rep.Status != healthOK {
		t.Fatalf("fresh handler: %d %+v", code, rep)
	}
	// The registry is dead: five requests open its breaker.
	for range cache.BreakerFailures {
		tok := userToken(t, f, nil)
		if err := f.h.ServeHTTP(httptest.NewRecorder(), f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a"), &recordingNext{}); err != nil {
			t.Fatal(err)
		}
	}
	code, rep := getHealth(t)
	if code != http.StatusServiceUnavailable || rep.Status != healthDown {
		t.Fatalf("registry breaker open: %d %+v", code, rep)
	}
	var reg *registryHealth
	for i := range rep.Registries {
		if rep.Registries[i].URL == deadRegistry {
			reg = &rep.Registries[i]
		}
	}
	if reg == nil || reg.Status != healthDown || reg.Breaker != "open" || reg.LastFailure == nil || reg.LastSuccess != nil {
		t.Fatalf("registry entry: %+v", reg)
	}
	for _, ih := range rep.Issuers {
		if ih.Issuer == f.sim.Issuer() && (ih.Status != healthOK || ih.LastSuccess == nil) {
			t.Errorf("issuer: %+v", ih)
		}
	}

	// An issuer that never answered.
	g := newHandlerFixture(t, func(h *Handler) { h.Issuer = "http://" + deadAddr(t) })
	observe(g.h)
	tok := userToken(t, f, nil)
	_ = g.h.ServeHTTP(httptest.NewRecorder(), g.request(t, "GET", "http://example.com/a", tok, "http://example.com/a"), &recordingNext{})
	_, rep = getHealth(t)
	found := false
	for _, ih := range rep.Issuers {
		if ih.Issuer == g.h.Issuer {
			found = true
			if ih.Status != healthDown || ih.LastFailure == nil || ih.LastSuccess != nil {
				t.Errorf("dead issuer: %+v", ih)
			}
		}
	}
	if !found {
		t.Errorf("dead issuer not reported: %+v", rep.Issuers)
	}
}

// An age in /helseid/health is never below zero, also for a source that
// succeeded after the report's time was taken (a registry call or a file
// reload during the Redis pings, or a wall clock stepped back).
func TestHealthAgeNeverNegative(t *testing.T) {
	f := newHandlerFixture(t, func(h *Handler) {
		h.Membership = &MembershipConfig{Service: testService, File: membershipFile(t)}
	})
	observe(f.h)
	const url = "http://example.com/fhir/Patient"
	if err := f.h.ServeHTTP(httptest.NewRecorder(), f.request(t, "GET", url, userToken(t, f, nil), url), &recordingNext{}); err != nil {
		t.Fatal(err)
	}
	rep := buildHealth(context.Background(), time.Now().Add(-time.Minute))
	var ages int
	for _, ih := range rep.Issuers {
		if ih.AgeSeconds != nil {
			ages++
			if *ih.AgeSeconds < 0 {
				t.Errorf("issuer %s: jwks_age_seconds %v", ih.Issuer, *ih.AgeSeconds)
			}
		}
	}
	for _, rh := range rep.Registries {
		if rh.AgeSeconds != nil {
			ages++
			if *rh.AgeSeconds < 0 {
				t.Errorf("registry %s%s: age_seconds %v", rh.URL, rh.Path, *rh.AgeSeconds)
			}
		}
	}
	if ages < 2 {
		t.Errorf("%d ages in the report, want the issuer's and the file's: %+v", ages, rep)
	}
}
