package caddymodule

import (
	"context"

	"go.opentelemetry.io/otel/trace"
)

// Tracing needs no glue of its own: with Caddy's tracing directive on, the
// request's context carries the request span, and authz starts its spans
// (helseid.verify_token, helseid.verify_proof with helseid.replay, and
// helseid.membership) as its children, from that span's own tracer provider.
// With tracing off, authz sees a span that does not record and does nothing
// more. See authz/trace.go for the names and attributes.

// traceID returns the trace id of the span in ctx, or "" when there is none
// (tracing off), for the audit entry.
func traceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}
