package caddymodule

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/helsegate/helsegate/authz"
)

// auditTestHandler is a Handler with a membership service whose audit
// logger JSON-encodes to w, without the time (so that entries compare).
func auditTestHandler(w io.Writer) *Handler {
	cfg := zap.NewProductionEncoderConfig()
	cfg.TimeKey = ""
	core := zapcore.NewCore(zapcore.NewJSONEncoder(cfg), zapcore.AddSync(w), zap.InfoLevel)
	return &Handler{
		audit:      zap.New(core).Named(testAuditName),
		allowLog:   new(atomic.Pointer[allowAudit]),
		membership: &authz.MembershipCheck{Service: "kjernejournal"},
	}
}

var auditTestPrincipal = &authz.Principal{
	ClientID: "client-1", TokenID: "jti-1", Kind: authz.KindMachine, SecurityLevel: "4",
	OrgParent: testOrg, JKT: "rnrnrnrnrnrnrnrnrnrnrnrnrnrnrnrnrnrnrnrnrnr",
	MembershipAnswered: true, MembershipAge: 3 * time.Second,
}

// TestAuditAllowSameEntry holds the allow entry, whose route fields are
// encoded once, to the bytes the general auditDecision writes.
func TestAuditAllowSameEntry(t *testing.T) {
	var fast, general bytes.Buffer
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example?x=1", nil)
	hf := auditTestHandler(&fast)
	for range 2 { // the second entry through the logger made by the first
		hf.auditAllow(context.Background(), r, auditTestPrincipal)
	}
	hg := auditTestHandler(&general)
	for range 2 {
		hg.auditDecision(context.Background(), r, "allow", hg.allowReason(), 0, auditTestPrincipal)
	}
	if fast.String() != general.String() {
		t.Fatalf("allow entries differ:\n%s\nwant\n%s", fast.String(), general.String())
	}
	t.Log(fast.String())

	// Through the logger kept in the token's memo: the same bytes again.
	var memo bytes.Buffer
	hm := auditTestHandler(&memo)
	p := *auditTestPrincipal
	p.Memo = new(authz.TokenMemo)
	for range 2 {
		hm.auditAllow(context.Background(), r, &p)
	}
	if memo.String() != general.String() {
		t.Fatalf("allow entries through the token's memo differ:\n%s\nwant\n%s", memo.String(), general.String())
	}

	// A replaced audit logger is followed.
	var other bytes.Buffer
	hf.audit = auditTestHandler(&other).audit
	hf.auditAllow(context.Background(), r, auditTestPrincipal)
	if other.Len() == 0 {
		t.Fatal("the allow entry did not go to the replaced audit logger")
	}
}

// BenchmarkAuditAllow is the audit entry of an allowed request, JSON-encoded
// to io.Discard.
func BenchmarkAuditAllow(b *testing.B) {
	h := auditTestHandler(io.Discard)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		h.auditAllow(ctx, r, auditTestPrincipal)
	}
}

// BenchmarkAuditAllowGeneral is the same entry through auditDecision, which
// encodes every field on every request (denials still take this path).
func BenchmarkAuditAllowGeneral(b *testing.B) {
	h := auditTestHandler(io.Discard)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		h.auditDecision(ctx, r, "allow", h.allowReason(), 0, auditTestPrincipal)
	}
}

// TestAuditAllowMemo holds the caller's logger kept in a token's memo to
// the caller it was made for: a Principal that says something else of its
// caller, or another audit logger, gets an entry of its own.
func TestAuditAllowMemo(t *testing.T) {
	var buf bytes.Buffer
	h := auditTestHandler(&buf)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	memo := new(authz.TokenMemo)
	p := *auditTestPrincipal
	p.Memo = memo
	h.auditAllow(context.Background(), r, &p)
	first, _ := memo.Load().(*callerAudit)
	if first == nil {
		t.Fatal("no caller logger kept in the memo")
	}
	h.auditAllow(context.Background(), r, &p)
	if memo.Load().(*callerAudit) != first {
		t.Fatal("the caller logger was made again for the same caller")
	}

	q := p
	q.OrgChild = "922734046"
	buf.Reset()
	h.auditAllow(context.Background(), r, &q)
	if !strings.Contains(buf.String(), `"org_child":"922734046"`) {
		t.Fatalf("an entry for another caller says: %s", buf.String())
	}

	var other bytes.Buffer
	h.audit = auditTestHandler(&other).audit
	h.auditAllow(context.Background(), r, &q)
	if other.Len() == 0 {
		t.Fatal("the allow entry did not go to the replaced audit logger")
	}
}

// TestAuditEntryOrder holds the field order docs/operations.md shows: the
// route's, the caller's, then the request's.
func TestAuditEntryOrder(t *testing.T) {
	var buf bytes.Buffer
	h := auditTestHandler(&buf)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	p := *auditTestPrincipal
	p.Memo = new(authz.TokenMemo)
	h.auditAllow(context.Background(), r, &p)
	want := []string{`"decision"`, `"reason"`, `"service"`, `"client_id"`, `"token_jti"`, `"method"`, `"path"`, `"membership_age_s"`}
	line, at := buf.String(), 0
	for _, k := range want {
		i := strings.Index(line[at:], k)
		if i < 0 {
			t.Fatalf("%s missing or out of order in %s", k, line)
		}
		at += i
	}
}

// BenchmarkAuditAllowMemo is the audit entry of an allowed request whose
// caller fields come encoded from the token's memo, as every request with a
// cached token has them.
func BenchmarkAuditAllowMemo(b *testing.B) {
	h := auditTestHandler(io.Discard)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	p := *auditTestPrincipal
	p.Memo = new(authz.TokenMemo)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		h.auditAllow(ctx, r, &p)
	}
}

// TestAuditAllowAllocs holds the allow entry to one allocation (its field
// slice, which zap's Write takes as escaping).
func TestAuditAllowAllocs(t *testing.T) {
	h := auditTestHandler(io.Discard)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	ctx := context.Background()
	if n := testing.AllocsPerRun(200, func() { h.auditAllow(ctx, r, auditTestPrincipal) }); n > 1 {
		t.Fatalf("the allow audit entry allocates %.0f times, want at most 1", n)
	}
	p := *auditTestPrincipal
	p.Memo = new(authz.TokenMemo)
	if n := testing.AllocsPerRun(200, func() { h.auditAllow(ctx, r, &p) }); n > 1 {
		t.Fatalf("the allow audit entry through the token's memo allocates %.0f times, want at most 1", n)
	}
}
