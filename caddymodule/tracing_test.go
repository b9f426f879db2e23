package caddymodule

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

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
