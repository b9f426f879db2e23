package caddymodule

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
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

// TestAuditAllowAllocs holds the allow entry to one allocation (its field
// slice, which zap's Write takes as escaping).
func TestAuditAllowAllocs(t *testing.T) {
	h := auditTestHandler(io.Discard)
	r := httptest.NewRequest("GET", "http://api.example.no/fhir/R4/Patient/example", nil)
	ctx := context.Background()
	if n := testing.AllocsPerRun(200, func() { h.auditAllow(ctx, r, auditTestPrincipal) }); n > 1 {
		t.Fatalf("the allow audit entry allocates %.0f times, want at most 1", n)
	}
}
