package caddymodule

import (
	"context"
	"net/http"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/helsegate/helsegate/authz"
)

// auditDecision writes the one audit entry of a decision, at Info on the
// logger http.handlers.helseid.audit (operators route it with
// log { include http.handlers.helseid.audit }): decision, reason
// code (authz.AllowReasons, authz.DenialReasons), the HTTP status of a
// denial (0: none, for an allow, whose status is the upstream's), service,
// who the caller is when the access token verified (client_id, org numbers,
// token kind, security level, HPR number, DPoP thumbprint and token jti,
// and the codes and ids of a validated trust-framework attest: legal
// entity, point of care, department, purpose of use, healthcare service,
// decision reference and whether the health worker chose it: rules ATT-16,
// ATT-20 and ATT-46 want them in the data source's access log), method,
// path without query, trace id, and the membership answer's age and
// staleness once a lookup answered. The caller's fields come before the
// request's so that an allowed request can have them encoded once per token
// (auditAllow). Never the token, the proof or the pid: authz.Principal does
// not hold them. The HPR number appears here and nowhere else in the logs.
// A caller whose token did not verify is not described: unverified claims
// are not evidence.
func (h *Handler) auditDecision(ctx context.Context, r *http.Request, decision, reason string, status int, p *authz.Principal) {
	ce := h.audit.Check(zap.InfoLevel, decision)
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 8)
	fields = append(fields,
		zap.String("decision", decision),
		zap.String("reason", reason),
	)
	if status != 0 {
		fields = append(fields, zap.Int("status", status))
	}
	fields = append(fields, zap.String("service", h.service()))
	if p != nil {
		fields = append(fields, zap.Inline(callerFields{p}))
	}
	ce.Write(requestFields(fields, ctx, r, p)...)
}

// requestFields appends to fields what an audit entry says of the request
// itself: method, path, trace id, and the membership answer the decision
// rested on (p may be nil).
func requestFields(fields []zap.Field, ctx context.Context, r *http.Request, p *authz.Principal) []zap.Field {
	fields = append(fields, zap.String("method", r.Method), zap.String("path", r.URL.Path))
	if id := traceID(ctx); id != "" {
		fields = append(fields, zap.String("trace_id", id))
	}
	if p != nil && p.MembershipAnswered {
		fields = append(fields, zap.Inline(membershipFields{p}))
	}
	return fields
}

// callerFields are the audit fields that describe a verified caller, written
// in line with the others (one zap.Field instead of nine).
type callerFields struct{ p *authz.Principal }

func (c callerFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	id := callerIDOf(c.p)
	return id.MarshalLogObject(enc)
}

// callerID is what the audit entry says of a verified caller, all of it
// from the access token (and its validated attest): the same for every
// request with that token.
type callerID struct {
	clientID, orgParent, orgChild, orgSupplier, kind, securityLevel, hprNumber, jkt, tokenID string
	attest                                                                                   authz.Attest
}

func callerIDOf(p *authz.Principal) callerID {
	return callerID{
		clientID: p.ClientID, orgParent: p.OrgParent, orgChild: p.OrgChild, orgSupplier: p.OrgSupplier,
		kind: string(p.Kind), securityLevel: p.SecurityLevel, hprNumber: p.HPRNumber, jkt: p.JKT,
		tokenID: p.TokenID, attest: p.Attest,
	}
}

func (c *callerID) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	a := &c.attest
	fields := [...][2]string{
		{"client_id", c.clientID}, {"org_parent", c.orgParent}, {"org_child", c.orgChild},
		{"org_supplier", c.orgSupplier}, {"token_kind", c.kind}, {"security_level", c.securityLevel},
		{"hpr_number", c.hprNumber}, {"jkt", c.jkt}, {"token_jti", c.tokenID},
		// A validated attest's, when there is one.
		{"legal_entity", a.LegalEntity}, {"point_of_care", a.PointOfCare}, {"department", a.Department},
		{"purpose_of_use", a.PurposeOfUse}, {"healthcare_service", a.HealthcareService},
		{"decision_ref", a.DecisionRef}, {"decision_user_selected", a.DecisionUserSelected},
	}
	n := len(fields)
	if *a == (authz.Attest{}) {
		n = 9
	}
	for _, f := range fields[:n] {
		enc.AddString(f[0], f[1])
	}
	return nil
}

// membershipFields are the membership answer's audit fields: its age in
// whole seconds, and membership_stale only when it was a last-known answer.
type membershipFields struct{ p *authz.Principal }

func (m membershipFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddInt64("membership_age_s", int64(m.p.MembershipAge.Seconds()))
	if m.p.MembershipStale {
		enc.AddBool("membership_stale", true)
	}
	return nil
}

// allowReason is the reason code of an allowed request on this route.
func (h *Handler) allowReason() string {
	if h.membership != nil {
		return authz.ReasonMember
	}
	return authz.ReasonOK
}

// auditAllow writes the audit entry of an allowed request: the entry
// auditDecision would write, with the fields that are the same for every
// allowed request on this route (decision, reason, service) encoded once
// into the route's allow logger (zap's With), and the caller's encoded once
// per verified token into a logger made from that one (callerAuditLogger).
func (h *Handler) auditAllow(ctx context.Context, r *http.Request, p *authz.Principal) {
	if h.allowLog == nil { // not provisioned (some tests build a Handler by hand)
		h.auditDecision(ctx, r, "allow", h.allowReason(), 0, p)
		return
	}
	allow := h.allowAuditLogger()
	if !allow.Core().Enabled(zap.InfoLevel) {
		return // no log takes the entry: encode nothing, keep nothing per token
	}
	logger := callerAuditLogger(allow, p)
	if logger == nil {
		logger = allow
	}
	ce := logger.Check(zap.InfoLevel, "allow")
	if ce == nil {
		return
	}
	// Room for the usual entry: method, path and the membership answer
	// (and the caller's fields when they are not in the logger). The
	// fields hold the request's strings, not the request: a marshaler
	// holding it would make the caller's copy of the request escape.
	var fields []zap.Field
	if logger == allow {
		fields = append(make([]zap.Field, 0, 4), zap.Inline(callerFields{p}))
	} else {
		fields = make([]zap.Field, 0, 3)
	}
	ce.Write(requestFields(fields, ctx, r, p)...)
}

// allowAudit is the audit logger with the allow entry's route fields, and the
// audit logger it was made from.
type allowAudit struct {
	base, allow *zap.Logger
}

// allowAuditLogger returns h.audit with the allow entry's route fields. It is
// made on first use and again whenever h.audit is another logger (tests
// replace it after Provision), so it always writes where h.audit does.
func (h *Handler) allowAuditLogger() *zap.Logger {
	if a := h.allowLog.Load(); a != nil && a.base == h.audit {
		return a.allow
	}
	a := &allowAudit{base: h.audit, allow: h.audit.With(
		zap.String("decision", "allow"),
		zap.String("reason", h.allowReason()),
		zap.String("service", h.service()),
	)}
	h.allowLog.Store(a)
	return a.allow
}

// callerAudit is the allow logger of one verified token: the route's allow
// logger with the caller's fields encoded once, kept in the token's memo
// (authz.TokenMemo) for as long as the token is in the verifier's cache.
type callerAudit struct {
	allow  *zap.Logger // the route's allow logger it was made from
	caller callerID    // the fields it says
	logger *zap.Logger
}

// callerAuditLogger returns allow with p's caller fields, from p's token
// memo, made when the memo has none for this allow logger and exactly these
// fields (it is checked on every use, so a Principal that ever said
// something else of its caller would get an entry of its own); nil when p
// has no memo. Encoding the nine to sixteen caller fields once per token
// instead of on every request halves the cost of an entry
// (BenchmarkAuditAllowMemo against BenchmarkAuditAllow).
// The price: one logger per cached token, about 1.4 KB (most of it zap's
// encoder buffer) for each configured log whose core Caddy gives this module,
// whether or not that log's filter later takes the audit entry. The fields
// are in memory only there; a log that excludes the audit logger never
// writes them.
func callerAuditLogger(allow *zap.Logger, p *authz.Principal) *zap.Logger {
	if p.Memo == nil {
		return nil
	}
	id := callerIDOf(p)
	if ca, ok := p.Memo.Load().(*callerAudit); ok && ca.allow == allow && ca.caller == id {
		return ca.logger
	}
	ca := &callerAudit{allow: allow, caller: id}
	ca.logger = allow.With(zap.Inline(&ca.caller))
	p.Memo.Store(ca)
	return ca.logger
}

// auditDenial writes the audit entry of a denied request, with the verified
// caller when the denial came after the access token verified
// (derr.Caller), and the operator's log line: a dead dependency at Error (at
// most one per 10 s), a rejected client at Debug.
func (h *Handler) auditDenial(ctx context.Context, r *http.Request, derr *authz.Error) {
	h.auditDecision(ctx, r, "deny", derr.Reason, status(derr.Class), derr.Caller)
	if derr.Class == authz.Unavailable {
		if !h.depLog.Allow() {
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
