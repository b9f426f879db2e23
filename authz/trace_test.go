package authz

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// tracedContext returns a context holding a recording parent span of a fresh
// provider whose spans land in the returned exporter.
func tracedContext(t *testing.T) (context.Context, trace.Span, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, parent := tp.Tracer("test").Start(context.Background(), "request")
	return ctx, parent, exp
}

// spansByName indexes the ended spans; a name seen twice fails the test.
func spansByName(t *testing.T, exp *tracetest.InMemoryExporter) map[string]tracetest.SpanStub {
	t.Helper()
	out := map[string]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		if _, dup := out[s.Name]; dup {
			t.Fatalf("span %s recorded twice", s.Name)
		}
		out[s.Name] = s
	}
	return out
}

func TestVerifySpans(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(func(h, c map[string]any) {
		c[ClaimPID] = "17056600574"
		c[ClaimHPRNumber] = "431001110"
		c[ClaimSecurityLevel] = "4"
	})
	ctx, parent, exp := tracedContext(t)
	if _, derr := f.v.Verify(ctx, f.request(tok, f.proof(tok, nil))); derr != nil {
		t.Fatal(derr)
	}
	parent.End()
	spans := spansByName(t, exp)
	req := spans["request"]
	for name, wantParent := range map[string]string{
		SpanVerifyToken: "request",
		SpanVerifyProof: "request",
		SpanReplay:      SpanVerifyProof,
	} {
		s, ok := spans[name]
		if !ok {
			t.Fatalf("no span %s; got %v", name, names(exp))
		}
		if s.Parent.SpanID() != spans[wantParent].SpanContext.SpanID() || s.SpanContext.TraceID() != req.SpanContext.TraceID() {
			t.Errorf("span %s: parent %s, want %s", name, s.Parent.SpanID(), wantParent)
		}
	}
	if v := attr(spans[SpanReplay], AttrReplayResult); v != "fresh" {
		t.Errorf("replay result %q, want fresh", v)
	}
	if v := attr(spans[SpanVerifyToken], AttrTokenCached); v != "false" {
		t.Errorf("token cached %q on the first use, want false", v)
	}
	noPersonalData(t, exp, "17056600574", "431001110", "917897468", "922734046", "8cd7c619", tok)

}

func TestVerifySpansReplay(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(nil)
	proof := f.proof(tok, nil)
	if _, derr := f.v.Verify(context.Background(), f.request(tok, proof)); derr != nil {
		t.Fatal(derr)
	}
	ctx, parent, exp := tracedContext(t)
	_, derr := f.v.Verify(ctx, f.request(tok, proof))
	if derr == nil || derr.Reason != "proof_replay" {
		t.Fatalf("want proof_replay, got %v", derr)
	}
	parent.End()
	spans := spansByName(t, exp)
	if v := attr(spans[SpanVerifyToken], AttrTokenCached); v != "true" {
		t.Errorf("token cached %q on the second use, want true", v)
	}
	if v := attr(spans[SpanReplay], AttrReplayResult); v != "replay" {
		t.Errorf("replay result %q, want replay", v)
	}
	for _, name := range []string{SpanReplay, SpanVerifyProof} {
		s := spans[name]
		if s.Status.Description != "proof_replay" || attr(s, AttrReason) != "proof_replay" {
			t.Errorf("span %s: status %+v reason %q, want the reason code", name, s.Status, attr(s, AttrReason))
		}
	}
	if derr.Caller == nil || derr.Caller.ClientID == "" || derr.Caller.JKT != f.jkt {
		t.Errorf("a proof denial after the token verified must carry the caller for the audit: %+v", derr.Caller)
	}
}

func TestMembershipSpan(t *testing.T) {
	now := testNow
	src := &fakeMembership{answers: map[string]Answer{
		"917897468": {Record: &Authorization{Organization: "917897468", Service: "kj", Member: true, Status: "active"}, FetchedAt: now, Source: "redis"},
	}}
	m := &MembershipCheck{Service: "kj", Rule: OrgParent, Source: src, Clock: ClockFunc(func() time.Time { return now })}
	ctx, parent, exp := tracedContext(t)
	p := &Principal{OrgParent: "917897468", ClientID: "client-1", HPRNumber: "431001110"}
	if derr := m.Check(ctx, p); derr != nil {
		t.Fatal(derr)
	}
	p2 := &Principal{OrgParent: "922734046"}
	derr := m.Check(ctx, p2)
	if derr == nil || derr.Reason != ReasonNotMember || derr.Caller != p2 {
		t.Fatalf("want not_member with the caller, got %v", derr)
	}
	parent.End()
	var got []string
	for _, s := range exp.GetSpans() {
		if s.Name != SpanMembership {
			continue
		}
		if s.Parent.SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("membership span is not a child of the request span")
		}
		got = append(got, attr(s, AttrMembershipTier)+"/"+attr(s, AttrMembershipResult)+"/"+attr(s, AttrMembershipSvc))
	}
	if strings.Join(got, " ") != "redis/member/kj registry/not_member/kj" {
		t.Errorf("membership spans (tier/result/service): %q", got)
	}
	noPersonalData(t, exp, "917897468", "922734046", "client-1", "431001110")
}

// With no recording span in the context (Caddy's tracing off), starting a
// span costs no allocation and returns no span.
func TestStartSpanWithoutTracing(t *testing.T) {
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		c, s := startSpan(ctx, SpanVerifyToken)
		if s != nil || c != ctx {
			t.Fatal("a span was started without a recording parent")
		}
		endSpan(s, nil)
	})
	if allocs != 0 {
		t.Fatalf("startSpan without tracing allocates %v times", allocs)
	}
}

type fakeMembership struct{ answers map[string]Answer }

func (f *fakeMembership) Lookup(_ context.Context, _, org string) (Answer, error) {
	if a, ok := f.answers[org]; ok {
		return a, nil
	}
	return Answer{FetchedAt: testNow, Source: "registry"}, nil
}

// attr returns the value of the span's attribute key, or "".
func attr(s tracetest.SpanStub, key attribute.Key) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

func names(exp *tracetest.InMemoryExporter) []string {
	var out []string
	for _, s := range exp.GetSpans() {
		out = append(out, s.Name)
	}
	return out
}

// noPersonalData fails when a span attribute or status holds one of values.
func noPersonalData(t *testing.T, exp *tracetest.InMemoryExporter, values ...string) {
	t.Helper()
	for _, s := range exp.GetSpans() {
		texts := []string{s.Name, s.Status.Description}
		for _, kv := range s.Attributes {
			texts = append(texts, string(kv.Key), kv.Value.Emit())
		}
		for _, ev := range s.Events {
			for _, kv := range ev.Attributes {
				texts = append(texts, kv.Value.Emit())
			}
		}
		for _, text := range texts {
			for _, v := range values {
				if v != "" && strings.Contains(text, v) {
					t.Errorf("span %s carries %.12q…", s.Name, v)
				}
			}
		}
	}
}
