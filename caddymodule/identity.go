package caddymodule

import (
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

// auditAllow writes the audit entry of an allowed request.
func (h *Handler) auditAllow(r *http.Request, p *authz.Principal) {
	if ce := h.audit.Check(zap.InfoLevel, "allow"); ce != nil {
		reason := "ok"
		if h.membership != nil {
			reason = authz.ReasonMember
		}
		ce.Write(
			zap.String("decision", "allow"),
			zap.String("reason", reason),
			zap.String("service", h.service()),
			zap.String("client_id", p.ClientID),
			zap.String("org_parent", p.OrgParent),
			zap.String("org_child", p.OrgChild),
			zap.String("org_supplier", p.OrgSupplier),
			zap.String("token_kind", string(p.Kind)),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.String("jkt", p.JKT),
			zap.String("token_jti", p.TokenID),
		)
	}
}

// auditDenial writes the audit entry of a denied request. p is the verified
// caller when the denial came after verification (policy, membership), else
// nil: an unverified caller's claims are not logged.
func (h *Handler) auditDenial(r *http.Request, p *authz.Principal, derr *authz.Error) {
	if ce := h.audit.Check(zap.InfoLevel, "deny"); ce != nil {
		fields := []zap.Field{
			zap.String("decision", "deny"),
			zap.String("reason", derr.Reason),
			zap.Int("status", status(derr.Kind)),
			zap.String("service", h.service()),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
		}
		if p != nil {
			fields = append(fields,
				zap.String("client_id", p.ClientID),
				zap.String("org_parent", p.OrgParent),
				zap.String("org_child", p.OrgChild),
				zap.String("org_supplier", p.OrgSupplier),
				zap.String("jkt", p.JKT),
				zap.String("token_jti", p.TokenID),
			)
		}
		ce.Write(fields...)
	}
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
