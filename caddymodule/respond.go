package caddymodule

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/helsegate/helsegate/authz"
)

// challenges holds the parts of WWW-Authenticate that depend on the config
// only, built once at Provision.
type challenges struct {
	algs     string // algs="…" of RFC 9449 §7.1
	bearer   bool   // dpop optional: Bearer is offered too
	scope    string // `, scope="…"` for insufficient_scope; "" without scopes
	metadata string // `, resource_metadata="…"` of RFC 9728 §5.1 for 401s; "" without
	useNonce bool
}

func newChallenges(cfg authz.Config, md *resourceMetadata) challenges {
	c := challenges{
		algs:   `algs="` + strings.Join(cfg.DPoPAlgorithms, " ") + `"`,
		bearer: cfg.DPoP == authz.DPoPOptional,
	}
	if md != nil {
		c.metadata = md.param
	}
	// RFC 6749 §3.3: a scope is one or more tokens; with none configured
	// there is no scope attribute.
	if len(cfg.Scopes) > 0 {
		c.scope = `, scope="` + strings.Join(cfg.Scopes, " ") + `"`
	}
	return c
}

// errorCode is the error code of a denial: the OAuth one (RFC 6750 §3.1,
// RFC 9449 §7.1, §9) or the gateway's own not_member and
// registry_unavailable.
func errorCode(derr *authz.Error) string {
	switch derr.Class {
	case authz.InvalidRequest:
		return "invalid_request"
	case authz.InvalidToken:
		return "invalid_token"
	case authz.InvalidProof:
		return "invalid_dpop_proof"
	case authz.UseNonce:
		return "use_dpop_nonce"
	case authz.InsufficientScope:
		return "insufficient_scope"
	case authz.NotMember:
		return "not_member"
	case authz.Unavailable:
		if strings.HasPrefix(derr.Reason, "registry_") {
			return "registry_unavailable"
		}
		return "temporarily_unavailable"
	default:
		return "unauthorized"
	}
}

// status is the HTTP status of a denial class: 400 malformed request, 401
// token, proof or nonce, 403 policy or membership, 503 a dependency.
func status(k authz.DenialClass) int {
	switch k {
	case authz.InvalidRequest:
		return http.StatusBadRequest
	case authz.InsufficientScope, authz.NotMember:
		return http.StatusForbidden
	case authz.Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusUnauthorized
	}
}

// setChallenge sets WWW-Authenticate (and DPoP-Nonce, Retry-After) for a denial.
func (h *Handler) setChallenge(hdr http.Header, derr *authz.Error) {
	c := h.challenge
	code := errorCode(derr)
	desc := `error_description="` + derr.Description + `"`
	switch derr.Class {
	case authz.NoCredentials:
		hdr.Set("WWW-Authenticate", "DPoP "+c.algs+c.metadata)
		if c.bearer {
			if c.metadata != "" {
				hdr.Add("WWW-Authenticate", "Bearer "+c.metadata[2:])
			} else {
				hdr.Add("WWW-Authenticate", "Bearer")
			}
		}
	case authz.InvalidRequest:
		hdr.Set("WWW-Authenticate", `DPoP error="invalid_request"`)
	case authz.InvalidToken, authz.InvalidProof:
		hdr.Set("WWW-Authenticate", `DPoP error="`+code+`", `+desc+", "+c.algs+c.metadata)
	case authz.UseNonce:
		hdr.Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", `+desc+c.metadata)
		hdr.Set("DPoP-Nonce", h.verifier.NewNonce())
	case authz.InsufficientScope:
		if authz.IsAttestReason(derr.Reason) {
			// The attest, not a scope, is what is missing: the reason is in
			// the body.
			hdr.Set("WWW-Authenticate", `DPoP error="insufficient_scope"`)
			break
		}
		hdr.Set("WWW-Authenticate", `DPoP error="insufficient_scope"`+c.scope)
	case authz.Unavailable:
		hdr.Set("Retry-After", "5")
	}
}

// problem is an RFC 9457 problem document. Detail is the denial's generic
// description: never a claim value, a token, a pid or an org number.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Error  string `json:"error"`
	// Reason is the reason code of an attest denial, so that a client can
	// tell a missing attest, a purpose the API does not take and an expired
	// attest (attestation_has_expired) apart. Other denials keep their
	// reason to the audit log.
	Reason string `json:"reason,omitempty"`
}

// The placeholders a denial sets for the server's error routes
// (handle_errors): the error code of the problem body and WWW-Authenticate
// (invalid_token, not_member, …; unauthorized when no credentials came) and
// the reason code of the audit entry (authz.DenialReasons).
const (
	placeholderError  = "http.helseid.error"
	placeholderReason = "http.helseid.reason"
)

// deny answers a denied request. When the server's error routes answer it
// (handle_errors), it returns a HandlerError for them, headers already set;
// otherwise it writes the problem+json body itself, since Caddy would send an
// empty one.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, derr *authz.Error) error {
	st := status(derr.Class)
	code := errorCode(derr)
	h.setChallenge(w.Header(), derr)
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		// For the error routes: why, in codes that hold no claim value.
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set(placeholderError, code)
			repl.Set(placeholderReason, derr.Reason)
		}
		if herr := caddyhttp.Error(st, derr); errorRoutesAnswer(srv, r, herr) {
			return herr
		}
	}
	pr := problem{
		Type:   "urn:helsegate:error:" + code,
		Title:  http.StatusText(st),
		Status: st,
		Detail: derr.Description,
		Error:  code,
	}
	if authz.IsAttestReason(derr.Reason) {
		pr.Reason = derr.Reason
	}
	body, err := json.Marshal(pr)
	if err != nil {
		return caddyhttp.Error(st, derr)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(st)
	_, _ = w.Write(body)
	return nil
}

// errorRoutesAnswer reports whether the server's error routes would answer
// err for r. The Caddyfile puts every site's handle_errors behind that site's
// host matcher, and one site's error routes must not silence the default
// body of another site on the same listener; so the routes are matched as
// Caddy will run them, with the error in the request.
func errorRoutesAnswer(srv *caddyhttp.Server, r *http.Request, err error) bool {
	if _, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		r = srv.Errors.WithError(r, err) // http.error.* for expression matchers
	}
	return routesAnswer(srv.Errors.Routes, r)
}

// routesAnswer reports whether some route of routes matches r and leads to
// a handler: one that is not a subroute, or a subroute whose own routes
// answer. A matcher that fails counts as an answer: Caddy will report it.
func routesAnswer(routes caddyhttp.RouteList, r *http.Request) bool {
	for _, rt := range routes {
		match, err := rt.MatcherSets.AnyMatchWithError(r)
		if err != nil {
			return true
		}
		if !match {
			continue
		}
		for _, mh := range rt.Handlers {
			sub, ok := mh.(*caddyhttp.Subroute)
			if !ok || routesAnswer(sub.Routes, r) {
				return true
			}
		}
		if rt.Terminal {
			return false
		}
	}
	return false
}
