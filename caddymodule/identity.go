package caddymodule

import (
	"context"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/helsegate/helsegate/authz"
)

// stripIdentityHeaders removes every inbound header whose name, lower-cased
// and with '_' read as '-', starts with x-helseid-: a client must never be
// able to set what the upstream takes for verified identity.
func stripIdentityHeaders(hdr http.Header) {
	for name := range hdr {
		if len(name) < len("x-helseid-") {
			continue
		}
		n := strings.ReplaceAll(strings.ToLower(name[:len("x-helseid-")]), "_", "-")
		if n == "x-helseid-" {
			delete(hdr, name)
		}
	}
}

// setIdentity sets the upstream headers and the placeholders of SPEC §6.
// Never the pid.
func (h *Handler) setIdentity(r *http.Request, p *authz.Principal) {
	set := func(name, v string) {
		if v != "" {
			r.Header.Set(name, v)
		}
	}
	set("X-Helseid-Org-Parent", p.OrgParent)
	set("X-Helseid-Org-Child", p.OrgChild)
	set("X-Helseid-Org-Supplier", p.OrgSupplier)
	set("X-Helseid-Client-Id", p.ClientID)
	set("X-Helseid-Token-Kind", string(p.Kind))
	set("X-Helseid-Security-Level", p.SecurityLevel)
	set("X-Helseid-Hpr-Number", p.HPRNumber)
	set("X-Helseid-Dpop-Jkt", p.JKT)
	if h.membership != nil {
		set("X-Helseid-Membership", h.membership.Service)
	}

	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	id := p.Subject
	if id == "" {
		id = p.ClientID
	}
	repl.Set("http.auth.user.id", id)
	repl.Set("http.auth.user.client_id", p.ClientID)
	repl.Set("http.auth.user.org_parent", p.OrgParent)
	repl.Set("http.auth.user.org_child", p.OrgChild)
	repl.Set("http.auth.user.org_supplier", p.OrgSupplier)
	repl.Set("http.auth.user.token_kind", string(p.Kind))
	repl.Set("http.auth.user.security_level", p.SecurityLevel)
	repl.Set("http.auth.user.hpr_number", p.HPRNumber)
	repl.Set("http.auth.user.jkt", p.JKT)
}

// auditDecision writes the one audit entry of a decision, at Info on the
// logger http.handlers.helseid.audit (operators route it with
// log { include http.handlers.helseid.audit }): decision, reason
// code (authz.AllowReasons, authz.DenialReasons), the HTTP status of a
// denial (0: none, for an allow, whose status is the upstream's), service,
// method, path without query, trace id, and who the caller is when the
// access token verified: client_id, org numbers, token kind, security level,
// HPR number, DPoP thumbprint and token jti. Never the token, the proof or the
// pid: authz.Principal does not hold them. The HPR number appears here and
// nowhere else in the logs. A caller whose token did not verify is not
// described: unverified claims are not evidence.
func (h *Handler) auditDecision(ctx context.Context, r *http.Request, decision, reason string, status int, p *authz.Principal) {
	ce := h.audit.Check(zap.InfoLevel, decision)
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 18)
	fields = append(fields,
		zap.String("decision", decision),
		zap.String("reason", reason),
	)
	if status != 0 {
		fields = append(fields, zap.Int("status", status))
	}
	fields = append(fields,
		zap.String("service", h.service()),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
	)
	if id := traceID(ctx); id != "" {
		fields = append(fields, zap.String("trace_id", id))
	}
	if p != nil {
		fields = append(fields,
			zap.String("client_id", p.ClientID),
			zap.String("org_parent", p.OrgParent),
			zap.String("org_child", p.OrgChild),
			zap.String("org_supplier", p.OrgSupplier),
			zap.String("token_kind", string(p.Kind)),
			zap.String("security_level", p.SecurityLevel),
			zap.String("hpr_number", p.HPRNumber),
			zap.String("jkt", p.JKT),
			zap.String("token_jti", p.TokenID),
		)
	}
	ce.Write(fields...)
}

// allowReason is the reason code of an allowed request on this route.
func (h *Handler) allowReason() string {
	if h.membership != nil {
		return authz.ReasonMember
	}
	return authz.ReasonOK
}

// auditAllow writes the audit entry of an allowed request.
func (h *Handler) auditAllow(ctx context.Context, r *http.Request, p *authz.Principal) {
	h.auditDecision(ctx, r, "allow", h.allowReason(), 0, p)
}

// auditDenial writes the audit entry of a denied request, with the verified
// caller when the denial came after the access token verified
// (derr.Caller), and the operator's log line: a dead dependency at Error (at
// most one per 10 s), a rejected client at Debug.
func (h *Handler) auditDenial(ctx context.Context, r *http.Request, derr *authz.Error) {
	h.auditDecision(ctx, r, "deny", derr.Reason, status(derr.Kind), derr.Caller)
	if derr.Kind == authz.Unavailable {
		if !h.depLog.allow() {
			return
		}
		h.logger.Error("a dependency needed for the decision is unavailable", zap.String("reason", derr.Reason), zap.Error(derr.Err))
	} else if ce := h.logger.Check(zap.DebugLevel, "request denied"); ce != nil {
		ce.Write(zap.String("reason", derr.Reason), zap.NamedError("cause", derr.Err))
	}
}

// service is the membership service of the route, or "".
func (h *Handler) service() string {
	if h.membership == nil {
		return ""
	}
	return h.membership.Service
}
