package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/time/rate"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// checkAuditEntry checks the fields every audit entry has, and that no
// field holds the pid or the token.
func checkAuditEntry(t *testing.T, e observer.LoggedEntry, decision, reason, service, path string, secrets ...string) map[string]any {
	t.Helper()
	if e.LoggerName != testAuditName || e.Level != zapcore.InfoLevel || e.Message != decision {
		t.Errorf("audit entry on %q at %s with message %q", e.LoggerName, e.Level, e.Message)
	}
	if e.Time.IsZero() {
		t.Error("audit entry has no time")
	}
	m := e.ContextMap()
	for k, want := range map[string]string{"decision": decision, "reason": reason, "service": service, "method": "GET", "path": path} {
		if m[k] != want {
			t.Errorf("audit %s = %v, want %q", k, m[k], want)
		}
	}
	b, _ := json.Marshal(m)
	for _, s := range append(secrets, testPID) {
		if s != "" && strings.Contains(string(b), s) {
			t.Errorf("audit entry carries %.12q…: %s", s, b)
		}
	}
	return m
}

// TestAuditEveryReason writes the audit entry of every reason code of the
// closed list, with and without a verified caller, and checks its fields.
func TestAuditEveryReason(t *testing.T) {
	ac, audit := observer.New(zapcore.DebugLevel)
	h := &Handler{
		audit:      zap.New(ac).Named(testAuditName),
		logger:     zap.NewNop(),
		depLog:     rate.NewLimiter(rate.Every(time.Hour), 1),
		membership: &authz.MembershipCheck{Service: testService},
	}
	caller := &authz.Principal{ClientID: "client-1", TokenID: "jti-1", Kind: authz.KindUser, SecurityLevel: "4",
		HPRNumber: testHPR, OrgParent: testOrg, OrgChild: testOrgChild, OrgSupplier: "984432515", JKT: "jkt-1"}
	r := httptest.NewRequest("GET", "http://example.com/fhir/Patient?identifier=secret-query", nil)
	ctx, span, _ := traced(t, context.Background())
	defer span.End()
	traceID := span.SpanContext().TraceID().String()

	callerFields := map[string]string{"client_id": "client-1", "token_jti": "jti-1", "token_kind": "user", "security_level": "4",
		"hpr_number": testHPR, "org_parent": testOrg, "org_child": testOrgChild, "org_supplier": "984432515", "jkt": "jkt-1"}
	check := func(t *testing.T, e observer.LoggedEntry, decision, reason, service string, st int, withCaller bool) {
		t.Helper()
		m := checkAuditEntry(t, e, decision, reason, service, "/fhir/Patient", "secret-query")
		if m["trace_id"] != traceID {
			t.Errorf("trace_id %v, want %s", m["trace_id"], traceID)
		}
		if st == 0 {
			if _, ok := m["status"]; ok {
				t.Errorf("an allow entry has a status: %v", m["status"])
			}
		} else if m["status"] != int64(st) {
			t.Errorf("status %v, want %d", m["status"], st)
		}
		for k, v := range callerFields {
			got, ok := m[k]
			if withCaller && got != v {
				t.Errorf("%s = %v, want %q", k, got, v)
			}
			if !withCaller && ok {
				t.Errorf("an unverified caller is described: %s = %v", k, got)
			}
		}
	}

	for _, r0 := range authz.AllowReasons() {
		t.Run(r0.Code, func(t *testing.T) {
			audit.TakeAll()
			hh := *h
			if r0.Code == authz.ReasonOK {
				hh.membership = nil
			}
			hh.auditAllow(ctx, r, caller)
			entries := audit.TakeAll()
			if len(entries) != 1 {
				t.Fatalf("want one entry, got %d", len(entries))
			}
			svc := testService
			if hh.membership == nil {
				svc = ""
			}
			check(t, entries[0], "allow", r0.Code, svc, 0, true)
		})
	}
	for _, r0 := range authz.DenialReasons() {
		t.Run(r0.Code, func(t *testing.T) {
			audit.TakeAll()
			h.auditDenial(ctx, r, &authz.Error{Class: r0.Class, Reason: r0.Code, Description: "d", Err: errors.New("cause")})
			h.auditDenial(ctx, r, &authz.Error{Class: r0.Class, Reason: r0.Code, Description: "d", Caller: caller})
			entries := audit.TakeAll()
			if len(entries) != 2 {
				t.Fatalf("want two entries, got %d", len(entries))
			}
			check(t, entries[0], "deny", r0.Code, testService, status(r0.Class), false)
			check(t, entries[1], "deny", r0.Code, testService, status(r0.Class), true)
		})
	}
}

// TestAuditServeHTTP drives real requests through the handler and checks the
// audit entry of each decision, and that the pid reaches no log line and
// the HPR number only the audit entry.
func TestAuditServeHTTP(t *testing.T) {
	f := newHandlerFixture(t, withMembership(t))
	audit, other := observe(f.h)
	jkt := f.key.Thumbprint()
	const url, htu = "http://example.com/fhir/Patient?x=1", "http://example.com/fhir/Patient"

	type tc struct {
		name       string
		req        func() *http.Request
		decision   string
		reason     string
		withCaller bool
	}
	var replayReq *http.Request
	cases := []tc{
		{"allowed user", func() *http.Request { return f.request(t, "GET", url, userToken(t, f, nil), htu) }, "allow", authz.ReasonMember, true},
		{"no credentials", func() *http.Request { return f.request(t, "GET", url, "", "") }, "deny", "no_credentials", false},
		{"expired token", func() *http.Request {
			return f.request(t, "GET", url, userToken(t, f, func(s *helseidsim.TokenSpec) { s.Lifetime = -time.Minute }), htu)
		}, "deny", "token_expired", false},
		{"proof for another URI", func() *http.Request {
			return f.request(t, "GET", url, userToken(t, f, nil), "http://example.com/other")
		}, "deny", "proof_htu", true},
		{"scope missing", func() *http.Request {
			return f.request(t, "GET", url, userToken(t, f, func(s *helseidsim.TokenSpec) { s.Scopes = []string{"openid"} }), htu)
		}, "deny", "scope_missing", true},
		{"not a member", func() *http.Request {
			return f.request(t, "GET", url, userToken(t, f, func(s *helseidsim.TokenSpec) { s.OrgParent = testOtherOrg }), htu)
		}, "deny", authz.ReasonNotMember, true},
		{"no org", func() *http.Request {
			return f.request(t, "GET", url, userToken(t, f, func(s *helseidsim.TokenSpec) { s.OrgParent = "" }), htu)
		}, "deny", authz.ReasonNoOrg, true},
		{"replayed proof", func() *http.Request {
			replayReq = f.request(t, "GET", url, userToken(t, f, nil), htu)
			if err := f.h.ServeHTTP(httptest.NewRecorder(), replayReq, &recordingNext{}); err != nil {
				t.Fatal(err)
			}
			audit.TakeAll()
			again := f.request(t, "GET", url, "", "")
			again.Header = replayReq.Header.Clone()
			return again
		}, "deny", "proof_replay", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			audit.TakeAll()
			r := c.req()
			if err := f.h.ServeHTTP(httptest.NewRecorder(), r, &recordingNext{}); err != nil {
				t.Fatal(err)
			}
			entries := audit.TakeAll()
			if len(entries) != 1 {
				t.Fatalf("want one audit entry, got %d", len(entries))
			}
			m := checkAuditEntry(t, entries[0], c.decision, c.reason, testService, "/fhir/Patient", "x=1")
			if c.withCaller {
				for k, want := range map[string]string{"client_id": helseidsim.DefaultClientID, "jkt": jkt, "token_kind": "user", "hpr_number": testHPR} {
					if m[k] != want {
						t.Errorf("%s = %v, want %q", k, m[k], want)
					}
				}
				if jti, _ := m["token_jti"].(string); jti == "" {
					t.Error("no token_jti")
				}
			} else if _, ok := m["client_id"]; ok {
				t.Errorf("an unverified caller is described: %v", m)
			}
		})
	}
	for _, e := range other.All() {
		b, _ := json.Marshal(e.ContextMap())
		if strings.Contains(string(b)+e.Message, testPID) || strings.Contains(string(b)+e.Message, testHPR) {
			t.Errorf("handler log line %q carries the pid or the HPR number: %s", e.Message, b)
		}
	}
}

// The audit entry says how old the membership answer decided on was, and
// whether it was stale; only once a lookup answered, and without an
// allocation more.
func TestAuditMembershipAge(t *testing.T) {
	ac, audit := observer.New(zapcore.DebugLevel)
	h := &Handler{audit: zap.New(ac).Named(testAuditName), logger: zap.NewNop(), depLog: rate.NewLimiter(rate.Every(time.Hour), 1),
		membership: &authz.MembershipCheck{Service: testService}}
	r := httptest.NewRequest("GET", "http://example.com/fhir/Patient", nil)
	base := authz.Principal{ClientID: "client-1", OrgParent: testOrg}
	for _, tc := range []struct {
		name      string
		answered  bool
		age       time.Duration
		stale     bool
		wantAge   any // nil: absent
		wantStale any
	}{
		{"fresh", true, 90*time.Second + 700*time.Millisecond, false, int64(90), nil},
		{"stale", true, 20 * time.Minute, true, int64(1200), true},
		{"just fetched", true, 0, false, int64(0), nil},
		{"no lookup answered", false, 0, false, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base
			p.MembershipAnswered, p.MembershipAge, p.MembershipStale = tc.answered, tc.age, tc.stale
			h.auditAllow(context.Background(), r, &p)
			entries := audit.TakeAll()
			if len(entries) != 1 {
				t.Fatalf("want one entry, got %d", len(entries))
			}
			m := entries[0].ContextMap()
			if m["membership_age_s"] != tc.wantAge || m["membership_stale"] != tc.wantStale {
				t.Fatalf("membership_age_s %#v membership_stale %#v, want %#v %#v",
					m["membership_age_s"], m["membership_stale"], tc.wantAge, tc.wantStale)
			}
		})
	}

	// As production writes it (JSON), the fields cost no allocation.
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	h.audit = zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel)).Named(testAuditName)
	plain, stale := base, base
	stale.MembershipAnswered, stale.MembershipAge, stale.MembershipStale = true, time.Hour, true
	without := testing.AllocsPerRun(200, func() { h.auditAllow(context.Background(), r, &plain) })
	with := testing.AllocsPerRun(200, func() { h.auditAllow(context.Background(), r, &stale) })
	if with > without {
		t.Errorf("the membership fields cost %v allocations per entry", with-without)
	}
}

// An allow served from a last-known answer while the registry fails is told
// apart from a fresh one in the audit entry.
func TestAuditStaleMembershipServeHTTP(t *testing.T) {
	var down atomic.Bool
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"organization":%q,"service":%q,"member":true,"status":"active","valid_to":null}`, testOrg, testService)
	}))
	defer reg.Close()
	f := newHandlerFixture(t, func(h *Handler) {
		h.Membership = &MembershipConfig{Service: testService, Registry: reg.URL,
			CacheTTL: caddy.Duration(time.Millisecond), NegativeTTL: caddy.Duration(time.Millisecond)}
	})
	audit, _ := observe(f.h)
	const url = "http://example.com/fhir/Patient"
	serve := func() map[string]any {
		t.Helper()
		next := &recordingNext{}
		if err := f.h.ServeHTTP(httptest.NewRecorder(), f.request(t, "GET", url, userToken(t, f, nil), url), next); err != nil || !next.called {
			t.Fatalf("not allowed: %v", err)
		}
		entries := audit.TakeAll()
		if len(entries) != 1 {
			t.Fatalf("want one audit entry, got %d", len(entries))
		}
		return entries[0].ContextMap()
	}

	m := serve()
	if m["membership_age_s"] != int64(0) || m["membership_stale"] != nil {
		t.Fatalf("fresh from the registry: membership_age_s %#v membership_stale %#v", m["membership_age_s"], m["membership_stale"])
	}
	down.Store(true)
	time.Sleep(5 * time.Millisecond) // past cache_ttl
	m = serve()
	if m["membership_stale"] != true || m["membership_age_s"] == nil {
		t.Fatalf("served stale while the registry is down: membership_age_s %#v membership_stale %#v", m["membership_age_s"], m["membership_stale"])
	}
}
