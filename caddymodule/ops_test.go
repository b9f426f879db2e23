package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/time/rate"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/cache/registry"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// Synthetic identities (HelseID's public test values): they must never
// appear where the test says so.
const (
	testPID       = "17056600574"
	testHPR       = "431001110"
	testOrg       = "917897468"
	testOrgChild  = "922734046"
	testOtherOrg  = "974600951" // valid, not in the membership file
	testService   = "kjernejournal"
	testAuditName = "http.handlers.helseid.audit"
)

// membershipFile writes a membership file that authorizes testOrg for
// testService and returns its path.
func membershipFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "members.json")
	doc := fmt.Sprintf(`{"authorizations":[{"organization":%q,"service":%q,"member":true,"status":"active","valid_to":null}]}`, testOrg, testService)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// withMembership is a fixture option: the route checks membership against
// a file.
func withMembership(t *testing.T) func(*Handler) {
	path := membershipFile(t)
	return func(h *Handler) { h.Membership = &MembershipConfig{Service: testService, File: path} }
}

// observe replaces the handler's loggers with observers: the audit logger
// (named as in Caddy) and the handler's own.
func observe(h *Handler) (audit, other *observer.ObservedLogs) {
	ac, audit := observer.New(zapcore.DebugLevel)
	oc, other := observer.New(zapcore.DebugLevel)
	h.audit = zap.New(ac).Named(testAuditName)
	h.logger = zap.New(oc).Named("http.handlers.helseid")
	return audit, other
}

// traced returns a context with a recording request span and the exporter
// its provider writes to.
func traced(t *testing.T, ctx context.Context) (context.Context, trace.Span, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("caddy").Start(ctx, "handler")
	return ctx, span, exp
}

func userToken(t *testing.T, f *handlerFixture, mod func(*helseidsim.TokenSpec)) string {
	t.Helper()
	spec := helseidsim.TokenSpec{OrgParent: testOrg, OrgChild: testOrgChild, PID: testPID, SecurityLevel: "4", HPRNumber: testHPR}
	if mod != nil {
		mod(&spec)
	}
	return f.token(t, spec)
}

// TestServeHTTPSpans drives the handler with a request span in the context,
// as Caddy's tracing directive makes it, and checks that the in-memory
// exporter sees helsegate's spans as its children, with bounded attributes
// and no personal data.
func TestServeHTTPSpans(t *testing.T) {
	f := newHandlerFixture(t, withMembership(t))
	audit, _ := observe(f.h)
	tok := userToken(t, f, nil)
	r := f.request(t, "GET", "http://example.com/fhir/Patient?id=1", tok, "http://example.com/fhir/Patient")
	ctx, reqSpan, exp := traced(t, r.Context())
	r = r.WithContext(ctx)
	next := &recordingNext{}
	if err := f.h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil || !next.called {
		t.Fatalf("not allowed: %v", err)
	}
	reqSpan.End()

	spans := map[string]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		spans[s.Name] = s
	}
	want := map[string]string{
		authz.SpanVerifyToken: "handler",
		authz.SpanVerifyProof: "handler",
		authz.SpanReplay:      authz.SpanVerifyProof,
		authz.SpanMembership:  "handler",
	}
	for name, parent := range want {
		s, ok := spans[name]
		if !ok {
			t.Fatalf("span %s not exported; got %d spans", name, len(spans))
		}
		if s.Parent.SpanID() != spans[parent].SpanContext.SpanID() || s.SpanContext.TraceID() != reqSpan.SpanContext().TraceID() {
			t.Errorf("span %s is not a child of %s", name, parent)
		}
	}
	m := spans[authz.SpanMembership]
	if got := spanAttr(m, authz.AttrMembershipTier) + "/" + spanAttr(m, authz.AttrMembershipResult); got != "file/member" {
		t.Errorf("membership span tier/result %q, want file/member", got)
	}
	for _, s := range exp.GetSpans() {
		for _, kv := range s.Attributes {
			v := kv.Value.Emit()
			for _, secret := range []string{testPID, testHPR, testOrg, testOrgChild, helseidsim.DefaultClientID, tok, f.key.Thumbprint()} {
				if strings.Contains(v, secret) {
					t.Errorf("span %s attribute %s carries %.12q…", s.Name, kv.Key, secret)
				}
			}
		}
	}

	// The audit entry names the trace.
	entries := audit.All()
	if len(entries) != 1 {
		t.Fatalf("want 1 audit entry, got %d", len(entries))
	}
	if got := entries[0].ContextMap()["trace_id"]; got != reqSpan.SpanContext().TraceID().String() {
		t.Errorf("audit trace_id %v, want %s", got, reqSpan.SpanContext().TraceID())
	}
}

func spanAttr(s tracetest.SpanStub, key attribute.Key) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

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
			h.auditDenial(ctx, r, &authz.Error{Kind: r0.Kind, Reason: r0.Code, Description: "d", Err: errors.New("cause")})
			h.auditDenial(ctx, r, &authz.Error{Kind: r0.Kind, Reason: r0.Code, Description: "d", Caller: caller})
			entries := audit.TakeAll()
			if len(entries) != 2 {
				t.Fatalf("want two entries, got %d", len(entries))
			}
			check(t, entries[0], "deny", r0.Code, testService, status(r0.Kind), false)
			check(t, entries[1], "deny", r0.Code, testService, status(r0.Kind), true)
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

// reasonsDoc is the page that documents every reason code, in its section
// reasonsSection.
const (
	reasonsDoc     = "../docs/checks-and-responses.md"
	reasonsSection = "\n## Reason codes"
)

// TestOperationsDocListsEveryReason compares the reason codes of
// docs/checks-and-responses.md (section "Reason codes") with the closed list
// of authz, including the outcome and the status of each.
func TestOperationsDocListsEveryReason(t *testing.T) {
	b, err := os.ReadFile(reasonsDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, reasonsSection)
	if i < 0 {
		t.Fatalf("%s has no section %q", reasonsDoc, reasonsSection[1:])
	}
	doc = doc[i+1:]
	if j := strings.Index(doc[3:], "\n## "); j >= 0 {
		doc = doc[:j+3]
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (allow|deny|error) \\| ([0-9]+|upstream's) \\| (.+) \\|$")
	documented := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(doc, -1) {
		if _, dup := documented[m[1]]; dup {
			t.Errorf("%s lists %q twice", reasonsDoc, m[1])
		}
		documented[m[1]] = m[2:]
	}
	want := map[string][]string{}
	for _, r := range authz.AllowReasons() {
		want[r.Code] = []string{"allow", "upstream's"}
	}
	for _, r := range authz.DenialReasons() {
		want[r.Code] = []string{outcomeOf(r.Kind), strconv.Itoa(status(r.Kind))}
	}
	var missing, extra []string
	for code, w := range want {
		d, ok := documented[code]
		if !ok {
			missing = append(missing, code)
			continue
		}
		if d[0] != w[0] || d[1] != w[1] {
			t.Errorf("%s: %s is %s %s, the code says %s %s", reasonsDoc, code, d[0], d[1], w[0], w[1])
		}
	}
	for code := range documented {
		if _, ok := want[code]; !ok {
			extra = append(extra, code)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("the reason codes of %s differ from authz.AllowReasons+DenialReasons: missing %q, not in the code %q", reasonsDoc, missing, extra)
	}
}

// TestMetricsRegistration registers the collectors in a fresh registry (a
// config load), again in the same one (a second handler), and in another
// (a reload), and checks the pre-resolved series are there.
func TestMetricsRegistration(t *testing.T) {
	for range 2 {
		reg := prometheus.NewPedanticRegistry()
		for range 2 {
			if err := registerMetrics(reg); err != nil {
				t.Fatal(err)
			}
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]int{}
		for _, mf := range mfs {
			names[mf.GetName()] = len(mf.GetMetric())
		}
		for _, n := range []string{"caddy_helseid_requests_total", "caddy_helseid_verification_duration_seconds",
			"caddy_helseid_membership_cache_results_total", "caddy_helseid_registry_calls_total",
			"caddy_helseid_jwks_refreshes_total", "caddy_helseid_replays_total"} {
			if names[n] == 0 {
				t.Errorf("%s not gathered", n)
			}
		}
		// One series per reason and route: the default route's at least,
		// and those of the routes other tests of this process provisioned.
		perRoute := len(authz.AllowReasons()) + len(authz.DenialReasons())
		if n := names["caddy_helseid_requests_total"]; n < perRoute || n%perRoute != 0 {
			t.Errorf("requests_total has %d series, want one per reason (%d) and route", n, perRoute)
		}
	}
}

// Counting a decision, a cache result or a registry call allocates nothing.
func TestMetricsNoAllocations(t *testing.T) {
	m := getMetrics()
	r := m.forRoute("kjernejournal")
	for name, fn := range map[string]func(){
		"allow":      func() { r.decided(outcomeAllow, authz.ReasonMember, time.Millisecond) },
		"deny":       func() { r.decided(outcomeDeny, "proof_replay", time.Millisecond) },
		"error":      func() { r.decided(outcomeError, authz.ReasonUnavailable, time.Millisecond) },
		"membership": func() { m.membershipResult(cache.TierLocal, cache.ResultHit) },
		"registry":   func() { m.registryCall("ok") },
		"jwks":       func() { m.jwksRefresh(true) },
	} {
		if a := testing.AllocsPerRun(200, fn); a != 0 {
			t.Errorf("%s: %v allocations per call", name, a)
		}
	}
}

// The route label: the route name, else the membership service, else
// "default"; never anything outside the closed alphabet.
func TestMetricsRouteLabel(t *testing.T) {
	for _, tc := range []struct {
		name, route, service, want, err string
	}{
		{"neither", "", "", "default", ""},
		{"membership service", "", "kjernejournal", "kjernejournal", ""},
		{"route over service", "pjd", "kjernejournal", "pjd", ""},
		{"route alone", "kj.v2_read-only", "", "kj.v2_read-only", ""},
		{"a path", "/kjernejournal/api", "", "", "must be 1 to 64"},
		{"a service that is no label", "", "kjerne journal", "", "name it with route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{Route: tc.route}
			if tc.service != "" {
				h.Membership = &MembershipConfig{Service: tc.service}
			}
			got, err := h.routeLabel()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("routeLabel() = %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("routeLabel() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestJWKSGauges(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	for _, tc := range []struct {
		name        string
		sts         []authz.KeyStatus
		age         float64
		fetched     bool
		wantFailing int
	}{
		{"nothing fetched yet", []authz.KeyStatus{{}}, 0, false, 0},
		{"first fetch failed", []authz.KeyStatus{{LastFailure: ago(time.Second)}}, 0, false, 1},
		{"fresh", []authz.KeyStatus{{LastSuccess: ago(time.Minute)}}, 60, true, 0},
		{"failed after a success", []authz.KeyStatus{{LastSuccess: ago(time.Hour), LastFailure: ago(time.Minute)}}, 3600, true, 1},
		{"recovered", []authz.KeyStatus{{LastSuccess: ago(time.Minute), LastFailure: ago(time.Hour)}}, 60, true, 0},
		{"the oldest of two", []authz.KeyStatus{{LastSuccess: ago(time.Minute)}, {LastSuccess: ago(2 * time.Hour)}}, 7200, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			age, fetched, failing := jwksGauges(tc.sts, now)
			if age != tc.age || fetched != tc.fetched || failing != tc.wantFailing {
				t.Fatalf("jwksGauges = %v, %v, %d; want %v, %v, %d", age, fetched, failing, tc.age, tc.fetched, tc.wantFailing)
			}
		})
	}
}

// Two routes count apart: a decision on one moves its series only.
func TestMetricsRoutesApart(t *testing.T) {
	m := getMetrics()
	a, b := m.forRoute("route-a"), m.forRoute("route-b")
	if m.forRoute("route-a") != a {
		t.Fatal("forRoute made a second set for one route")
	}
	count := func(route string) float64 {
		return testutil.ToFloat64(m.requests.WithLabelValues(outcomeDeny, "no_credentials", route))
	}
	a0, b0 := count("route-a"), count("route-b")
	a.decided(outcomeDeny, "no_credentials", time.Millisecond)
	a.decided(outcomeDeny, "no_credentials", time.Millisecond)
	b.decided(outcomeDeny, "no_credentials", time.Millisecond)
	if da, db := count("route-a")-a0, count("route-b")-b0; da != 2 || db != 1 {
		t.Fatalf("route-a went up by %v, route-b by %v; want 2 and 1", da, db)
	}
}

func TestServeHTTPMetrics(t *testing.T) {
	f := newHandlerFixture(t, withMembership(t))
	observe(f.h)
	m := getMetrics()
	count := func(outcome, reason string) float64 {
		// The route label is the membership service: the fixture names no route.
		return testutil.ToFloat64(m.requests.WithLabelValues(outcome, reason, testService))
	}
	before := map[string]float64{
		"allow/member":    count("allow", "member"),
		"deny/no_creds":   count("deny", "no_credentials"),
		"deny/not_member": count("deny", "not_member"),
		"local/miss":      testutil.ToFloat64(m.membership.WithLabelValues("local", "miss")),
		"local/hit":       testutil.ToFloat64(m.membership.WithLabelValues("local", "hit")),
		"replays":         testutil.ToFloat64(m.replays),
	}
	const url = "http://example.com/a"
	serve := func(r *http.Request) {
		if err := f.h.ServeHTTP(httptest.NewRecorder(), r, &recordingNext{}); err != nil {
			t.Fatal(err)
		}
	}
	serve(f.request(t, "GET", url, userToken(t, f, nil), url))
	serve(f.request(t, "GET", url, userToken(t, f, nil), url))
	serve(f.request(t, "GET", url, "", ""))
	serve(f.request(t, "GET", url, userToken(t, f, func(s *helseidsim.TokenSpec) { s.OrgParent = testOtherOrg }), url))
	r := f.request(t, "GET", url, userToken(t, f, nil), url)
	serve(r)
	again := f.request(t, "GET", url, "", "")
	again.Header = r.Header.Clone()
	serve(again)

	for k, want := range map[string]float64{
		"allow/member":    3,
		"deny/no_creds":   1,
		"deny/not_member": 1,
		"local/miss":      2, // testOrg once, testOtherOrg once
		"local/hit":       2,
		"replays":         1,
	} {
		var now float64
		switch k {
		case "allow/member":
			now = count("allow", "member")
		case "deny/no_creds":
			now = count("deny", "no_credentials")
		case "deny/not_member":
			now = count("deny", "not_member")
		case "local/miss":
			now = testutil.ToFloat64(m.membership.WithLabelValues("local", "miss"))
		case "local/hit":
			now = testutil.ToFloat64(m.membership.WithLabelValues("local", "hit"))
		case "replays":
			now = testutil.ToFloat64(m.replays)
		}
		if now-before[k] != want {
			t.Errorf("%s went up by %v, want %v", k, now-before[k], want)
		}
	}
}

func TestBreakerGauge(t *testing.T) {
	b := cache.NewBreaker("registry", cache.WithHalfOpenAfter(time.Hour))
	liveBreakers.add(b)
	defer liveBreakers.remove(b)
	reg := prometheus.NewPedanticRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	gauge := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "caddy_helseid_breaker_state" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "registry" {
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	if g := gauge(); g != 0 {
		t.Fatalf("closed breaker: gauge %v, want 0", g)
	}
	for range cache.BreakerFailures {
		_ = b.Do(context.Background(), func(context.Context) error { return errors.New("down") })
	}
	if g := gauge(); g != 2 {
		t.Fatalf("open breaker: gauge %v, want 2", g)
	}
}

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

// deadAddr returns a loopback address nothing listens on.
// testRedisAddr is the Redis of the tests (HELSEGATE_TEST_REDIS, or the
// default port on loopback).
func testRedisAddr() string {
	if a := os.Getenv("HELSEGATE_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// seededPrefix returns a key prefix of its own under which the test Redis
// holds the replay store's epoch marker, as a store in service long before
// the test: a prefix used for the first time is otherwise a store that may
// have lost its records, and refuses proofs for one skew.
func seededPrefix(tb testing.TB, base string) string {
	tb.Helper()
	prefix := base + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	rc := redis.NewClient(&redis.Options{Addr: testRedisAddr()})
	defer rc.Close()
	if err := rc.Set(context.Background(), prefix+"v1:epoch", "1/0", time.Hour).Err(); err != nil {
		tb.Fatalf("seeding the epoch marker: %v", err)
	}
	return prefix
}

func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
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

// The cache's fill is bounded by the registry timeout plus room for the Redis
// tier, so a registry at or past the old fixed 10 s bound still opens its
// breaker.
func TestMembershipFetchTimeoutFromRegistryTimeout(t *testing.T) {
	for _, timeout := range []time.Duration{0, 10 * time.Second, 15 * time.Second} {
		t.Run(timeout.String(), func(t *testing.T) {
			f := newHandlerFixture(t, func(h *Handler) {
				h.Membership = &MembershipConfig{Service: testService, Registry: "http://" + deadAddr(t), Timeout: caddy.Duration(timeout)}
			})
			registryTimeout := timeout
			if registryTimeout == 0 {
				registryTimeout = registry.DefaultTimeout
			}
			got := f.h.membership.Source.(*cache.CachedMembership).FetchTimeout()
			if want := cache.MembershipFetchTimeout(registryTimeout, 0); got != want || got <= registryTimeout {
				t.Fatalf("fill bound %s for a registry timeout of %s, want %s", got, registryTimeout, want)
			}
		})
	}
}

// A file source has no Redis tier in front of it (a file is per-replica
// configuration), and a successful reload evicts the in-process tier: a
// member removed from the file is refused right after the reload.
func TestMembershipFileReloadEvicts(t *testing.T) {
	path := membershipFile(t)
	f := newHandlerFixture(t, func(h *Handler) {
		h.Membership = &MembershipConfig{Service: testService, File: path}
		// With Redis configured: were the Redis tier in front of the file,
		// every miss would count a Redis hit, miss or error.
		h.Redis = &cache.RedisConfig{URL: "redis://" + testRedisAddr(), KeyPrefix: seededPrefix(t, "helsegate-test-file-")}
	})
	audit, _ := observe(f.h)
	m := getMetrics()
	redisTier := func() float64 {
		n := 0.0
		for _, res := range []string{cache.ResultHit, cache.ResultMiss, cache.ResultError} {
			n += testutil.ToFloat64(m.membership.WithLabelValues(cache.TierRedis, res))
		}
		return n
	}
	before := redisTier()
	const url = "http://example.com/fhir/Patient"
	serve := func() string {
		t.Helper()
		if err := f.h.ServeHTTP(httptest.NewRecorder(), f.request(t, "GET", url, userToken(t, f, nil), url), &recordingNext{}); err != nil {
			t.Fatal(err)
		}
		entries := audit.TakeAll()
		if len(entries) != 1 {
			t.Fatalf("want one audit entry, got %d", len(entries))
		}
		return entries[0].ContextMap()["reason"].(string)
	}
	for range 2 { // the second from the in-process tier
		if reason := serve(); reason != authz.ReasonMember {
			t.Fatalf("a member in the file: %s", reason)
		}
	}
	if n := redisTier() - before; n != 0 {
		t.Errorf("the file source's lookups consulted the Redis tier %v times", n)
	}

	doc := fmt.Sprintf(`{"authorizations":[{"organization":%q,"service":%q,"member":true,"status":"active","valid_to":null}]}`, testOtherOrg, testService)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var file *registry.File
	for _, pm := range memberships.list() {
		if pm.file != nil && pm.file.Path() == path {
			file = pm.file
		}
	}
	if file == nil {
		t.Fatal("the route's membership file is not listed")
	}
	if err := file.Reload(); err != nil {
		t.Fatal(err)
	}
	if reason := serve(); reason != authz.ReasonNotMember {
		t.Fatalf("the member removed from the file, right after the reload: %s, want %s", reason, authz.ReasonNotMember)
	}
	if n := redisTier() - before; n != 0 {
		t.Errorf("the file source's lookups consulted the Redis tier %v times", n)
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
