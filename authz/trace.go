package authz

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of helsegate's spans.
const TracerName = "github.com/helsegate/helsegate"

// Span names. Their attributes carry reason codes, cache tiers and flags,
// never a claim value, a token, a pid, an org number or a client id.
const (
	SpanVerifyToken = "helseid.verify_token" // the access token (attribute helseid.token.cached)
	SpanVerifyProof = "helseid.verify_proof" // the DPoP proof and its binding
	SpanReplay      = "helseid.replay"       // child of verify_proof (helseid.replay.result)
	SpanMembership  = "helseid.membership"   // helseid.membership.tier, .result, .stale, .service
)

// Span attribute keys.
const (
	AttrReason           = attribute.Key("helseid.reason")
	AttrTokenCached      = attribute.Key("helseid.token.cached")
	AttrReplayResult     = attribute.Key("helseid.replay.result") // fresh | replay | error
	AttrMembershipTier   = attribute.Key("helseid.membership.tier")
	AttrMembershipResult = attribute.Key("helseid.membership.result")
	AttrMembershipStale  = attribute.Key("helseid.membership.stale")
	AttrMembershipSvc    = attribute.Key("helseid.membership.service")
)

// startSpan starts a child of the span in ctx, from that span's own tracer
// provider, and returns nil when that span is not recording: with Caddy's
// tracing directive off (or the request sampled out) a check costs one
// context lookup and nothing else, not even a context allocation.
func startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer(TracerName).Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal))
}

// endSpan ends span (nil: nothing to do), recording the denial's reason code
// as the status. The cause (derr.Err) is not recorded: library messages
// may quote what the client sent.
func endSpan(span trace.Span, derr *Error) {
	if span == nil {
		return
	}
	if derr != nil {
		span.SetAttributes(AttrReason.String(derr.Reason))
		span.SetStatus(codes.Error, derr.Reason)
	}
	span.End()
}
