package caddymodule

import (
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/helsegate/helsegate/authz"
)

// stripIdentityHeaders removes every inbound header whose name, lower-cased
// and with '_' read as '-', starts with x-helseid-: a client must never be
// able to set what the upstream takes for verified identity.
func stripIdentityHeaders(hdr http.Header) {
	for name := range hdr {
		if hasIdentityPrefix(name) {
			delete(hdr, name)
		}
	}
}

// stripIdentityConnection removes from the Connection header every name
// with the identity prefix. reverse_proxy removes the headers Connection
// names as hop-by-hop (RFC 9110 §7.6.1) after this handler set them, so a
// client could otherwise take verified identity away from the upstream (an
// org child or an HPR number missing reads as a different caller). The
// other names, keep-alive and close among them, stay.
func stripIdentityConnection(hdr http.Header) {
	vals := hdr["Connection"]
	if !slices.ContainsFunc(vals, connectionNamesIdentity) {
		return // every request but a hostile one: nothing allocated
	}
	var keep []string
	for _, v := range vals {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" && !hasIdentityPrefix(name) {
				keep = append(keep, name)
			}
		}
	}
	if len(keep) == 0 {
		delete(hdr, "Connection")
		return
	}
	hdr["Connection"] = []string{strings.Join(keep, ", ")}
}

// connectionNamesIdentity reports whether a Connection value names a header
// with the identity prefix.
func connectionNamesIdentity(v string) bool {
	for v != "" {
		var name string
		name, v, _ = strings.Cut(v, ",")
		if hasIdentityPrefix(strings.TrimSpace(name)) {
			return true
		}
	}
	return false
}

// guardTrailers keeps identity headers out of the request's trailers, which
// net/http fills in when the body reaches its end (declared in a Trailer
// header or not, when any is declared) and reverse_proxy sends on after the
// body: the names are removed now and again once the body has been read.
func guardTrailers(r *http.Request) {
	if r.Trailer != nil {
		stripIdentityHeaders(r.Trailer)
	}
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	r.Body = &trailerGuard{ReadCloser: r.Body, r: r}
}

// trailerGuard strips identity headers from r.Trailer when the body ends,
// before reverse_proxy copies the trailers for the upstream in the same Read.
type trailerGuard struct {
	io.ReadCloser
	r *http.Request
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if err == io.EOF && g.r.Trailer != nil {
		stripIdentityHeaders(g.r.Trailer)
	}
	return n, err
}

// identityPrefix is the prefix of the identity headers, lower case.
const identityPrefix = "x-helseid-"

// hasIdentityPrefix reports whether name starts with x-helseid- in any case,
// with '_' for '-' (without allocating: it runs on every inbound header).
func hasIdentityPrefix(name string) bool {
	if len(name) < len(identityPrefix) {
		return false
	}
	for i := 0; i < len(identityPrefix); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		} else if c == '_' {
			c = '-'
		}
		if c != identityPrefix[i] {
			return false
		}
	}
	return true
}

// The identity headers, in canonical form (http.CanonicalHeaderKey).
const (
	hdrOrgParent     = "X-Helseid-Org-Parent"
	hdrOrgChild      = "X-Helseid-Org-Child"
	hdrOrgSupplier   = "X-Helseid-Org-Supplier"
	hdrClientID      = "X-Helseid-Client-Id"
	hdrTokenKind     = "X-Helseid-Token-Kind"
	hdrSecurityLevel = "X-Helseid-Security-Level"
	hdrHPRNumber     = "X-Helseid-Hpr-Number"
	hdrDPoPJKT       = "X-Helseid-Dpop-Jkt"
	hdrMembership    = "X-Helseid-Membership"

	// From a validated trust-framework attest.
	hdrLegalEntity          = "X-Helseid-Legal-Entity"
	hdrPointOfCare          = "X-Helseid-Point-Of-Care"
	hdrDepartment           = "X-Helseid-Department"
	hdrPurposeOfUse         = "X-Helseid-Purpose-Of-Use"
	hdrHealthcareService    = "X-Helseid-Healthcare-Service"
	hdrDecisionRef          = "X-Helseid-Decision-Ref"
	hdrDecisionUserSelected = "X-Helseid-Decision-User-Selected"

	numIdentityHdrs = 16
)

// setIdentity sets the upstream headers and the placeholders of a verified
// caller, with the codes and ids of a validated attest. Never the pid.
func (h *Handler) setIdentity(r *http.Request, p *authz.Principal) {
	// The values are gathered on the stack, then copied into one backing
	// array of their number (the names are canonical constants, so the map
	// is written directly): one allocation of what is set, not one per
	// header, nor one with room for all sixteen (the bytes a request
	// allocates are what its share of the collector costs).
	var names, local [numIdentityHdrs]string
	n := 0
	set := func(name, v string) {
		if v != "" {
			names[n], local[n] = name, v
			n++
		}
	}
	set(hdrOrgParent, p.OrgParent)
	set(hdrOrgChild, p.OrgChild)
	set(hdrOrgSupplier, p.OrgSupplier)
	set(hdrClientID, p.ClientID)
	set(hdrTokenKind, string(p.Kind))
	set(hdrSecurityLevel, p.SecurityLevel)
	set(hdrHPRNumber, p.HPRNumber)
	set(hdrDPoPJKT, p.JKT)
	if h.membership != nil {
		set(hdrMembership, h.membership.Service)
	}
	a := &p.Attest
	set(hdrLegalEntity, a.LegalEntity)
	set(hdrPointOfCare, a.PointOfCare)
	set(hdrDepartment, a.Department)
	set(hdrPurposeOfUse, a.PurposeOfUse)
	set(hdrHealthcareService, a.HealthcareService)
	set(hdrDecisionRef, a.DecisionRef)
	set(hdrDecisionUserSelected, a.DecisionUserSelected)
	vals := make([]string, n)
	copy(vals, local[:n])
	for i, name := range names[:n] {
		r.Header[name] = vals[i : i+1 : i+1]
	}

	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	// The placeholders are answered on demand from p (most are never read):
	// values set earlier under these names are dropped so that ours win, as
	// a Set would.
	for _, name := range identityPlaceholders {
		repl.Delete(name)
	}
	repl.Map(principalPlaceholders{p}.get)
}

// identityPlaceholders are the placeholders setIdentity answers.
var identityPlaceholders = [...]string{
	"http.auth.user.id",
	"http.auth.user.client_id",
	"http.auth.user.org_parent",
	"http.auth.user.org_child",
	"http.auth.user.org_supplier",
	"http.auth.user.token_kind",
	"http.auth.user.security_level",
	"http.auth.user.hpr_number",
	"http.auth.user.jkt",
	"http.auth.user.legal_entity",
	"http.auth.user.point_of_care",
	"http.auth.user.department",
	"http.auth.user.purpose_of_use",
	"http.auth.user.healthcare_service",
	"http.auth.user.decision_ref",
	"http.auth.user.decision_user_selected",
}

// principalPlaceholders answers the http.auth.user.* placeholders of a
// verified principal: id is sub, else client_id; never the pid.
type principalPlaceholders struct{ p *authz.Principal }

func (pp principalPlaceholders) get(key string) (any, bool) {
	name, ok := strings.CutPrefix(key, "http.auth.user.")
	if !ok {
		return nil, false
	}
	p := pp.p
	switch name {
	case "id":
		if p.Subject != "" {
			return p.Subject, true
		}
		return p.ClientID, true
	case "client_id":
		return p.ClientID, true
	case "org_parent":
		return p.OrgParent, true
	case "org_child":
		return p.OrgChild, true
	case "org_supplier":
		return p.OrgSupplier, true
	case "token_kind":
		return string(p.Kind), true
	case "security_level":
		return p.SecurityLevel, true
	case "hpr_number":
		return p.HPRNumber, true
	case "jkt":
		return p.JKT, true
	case "legal_entity":
		return p.Attest.LegalEntity, true
	case "point_of_care":
		return p.Attest.PointOfCare, true
	case "department":
		return p.Attest.Department, true
	case "purpose_of_use":
		return p.Attest.PurposeOfUse, true
	case "healthcare_service":
		return p.Attest.HealthcareService, true
	case "decision_ref":
		return p.Attest.DecisionRef, true
	case "decision_user_selected":
		return p.Attest.DecisionUserSelected, true
	}
	return nil, false
}
