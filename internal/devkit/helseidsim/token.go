package helseidsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Form fields of the token endpoint besides the OAuth ones (grant_type,
// client_id, scope, resource). These are simulator-only: real HelseID takes
// org numbers from the client registration or the client assertion.
const (
	FormOrgParent      = "orgnr_parent"
	FormOrgChild       = "orgnr_child"
	FormOrgSupplier    = "orgnr_supplier"
	FormTenancy        = "tenancy"
	FormUser           = "user" // "true" mints a user token
	FormPID            = "pid"
	FormSecurityLevel  = "security_level"
	FormAssuranceLevel = "assurance_level"
	FormHPRNumber      = "hpr_number"
	FormSubject        = "sub"
)

// Defaults for user tokens from the token endpoint (synthetic test values
// from HelseID's public examples). The assurance level, unless asked for,
// follows the security level as HelseID maps them: 4 high, 3 substantial,
// otherwise low.
const (
	DefaultPID           = "17056600574"
	DefaultSecurityLevel = "4"
)

// Tenancy values of helseid://claims/client/client_tenancy. Every token the
// endpoint issues carries one, as HelseID's do: multi-tenant when the
// request names a supplier (orgnr_supplier), single-tenant otherwise, unless
// the tenancy field asks for one.
const (
	TenancySingle = "single-tenant"
	TenancyMulti  = "multi-tenant"
	TenancyNone   = "none" // HelseID TTT only
)

// handleToken implements client_credentials with a mandatory DPoP proof. No
// client authentication is performed.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		tokenError(w, "invalid_request", "malformed form body")
		return
	}
	f := r.PostForm
	if gt := f.Get("grant_type"); gt != "client_credentials" {
		tokenError(w, "invalid_request", "grant_type must be client_credentials")
		return
	}
	jkt, err := s.checkProof(r.Header.Values("DPoP"))
	if err != nil {
		tokenError(w, "invalid_dpop_proof", err.Error())
		return
	}
	spec, err := s.specFromForm(f, jkt)
	if err != nil {
		tokenError(w, "invalid_request", err.Error())
		return
	}
	tok, err := s.Mint(spec)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	scopes := spec.Scopes
	if scopes == nil {
		scopes = []string{DefaultScope}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "DPoP",
		"expires_in":   int64(DefaultLifetime / time.Second),
		"scope":        strings.Join(scopes, " "),
	})
}

// specFromForm reads the token request's form into a TokenSpec bound to
// jkt. Its errors are the description of an invalid_request.
func (s *Server) specFromForm(f url.Values, jkt string) (TokenSpec, error) {
	tenancy, err := tenancyFromForm(f)
	if err != nil {
		return TokenSpec{}, err
	}
	spec := TokenSpec{
		Audience:    f["resource"],
		Scopes:      strings.Fields(f.Get("scope")),
		ClientID:    f.Get("client_id"),
		OrgParent:   f.Get(FormOrgParent),
		OrgChild:    f.Get(FormOrgChild),
		OrgSupplier: f.Get(FormOrgSupplier),
		Tenancy:     tenancy,
		JKT:         jkt,
	}
	if len(spec.Scopes) == 0 {
		spec.Scopes = nil
	}
	if f.Get(FormUser) == "true" {
		spec.PID = orDefault(f.Get(FormPID), DefaultPID)
		spec.SecurityLevel = orDefault(f.Get(FormSecurityLevel), DefaultSecurityLevel)
		spec.AssuranceLevel = orDefault(f.Get(FormAssuranceLevel), assuranceOf(spec.SecurityLevel))
		spec.HPRNumber = f.Get(FormHPRNumber)
		spec.Subject = orDefault(f.Get(FormSubject), s.pseudonym(orDefault(spec.ClientID, DefaultClientID), spec.PID))
	}
	if spec.Attest, err = attestFromForm(f, s.now()); err != nil {
		return TokenSpec{}, err
	}
	return spec, nil
}

// tenancyFromForm gives the tenancy field, or when it is empty the one
// HelseID would give: multi-tenant when a supplier is named.
func tenancyFromForm(f url.Values) (string, error) {
	switch tenancy := f.Get(FormTenancy); tenancy {
	case "":
		if f.Get(FormOrgSupplier) != "" {
			return TenancyMulti, nil
		}
		return TenancySingle, nil
	case TenancySingle, TenancyMulti, TenancyNone:
		return tenancy, nil
	default:
		return "", errors.New("tenancy must be single-tenant, multi-tenant or none")
	}
}

func tokenError(w http.ResponseWriter, code, desc string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": desc})
}

// assuranceOf maps a HelseID security level to its eIDAS assurance level.
func assuranceOf(securityLevel string) string {
	switch securityLevel {
	case "4":
		return "high"
	case "3":
		return "substantial"
	default:
		return "low"
	}
}

// pseudonym stands in for HelseID's sub: an opaque value, the same for one
// person at one client while the simulator runs, from which the pid cannot
// be read (an HMAC under a random key, base64 with padding as HelseID's
// look).
func (s *Server) pseudonym(clientID, pid string) string {
	mac := hmac.New(sha256.New, s.subKey)
	mac.Write([]byte(clientID + "\x00" + pid))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
