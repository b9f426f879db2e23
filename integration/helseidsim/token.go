package helseidsim

import (
	"net/http"
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
)

// Defaults for user tokens from the token endpoint (synthetic test values
// from HelseID's public examples).
const (
	DefaultPID           = "17056600574"
	DefaultSecurityLevel = "4"
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

	spec := TokenSpec{
		Audience:    f["resource"],
		Scopes:      strings.Fields(f.Get("scope")),
		ClientID:    f.Get("client_id"),
		OrgParent:   f.Get(FormOrgParent),
		OrgChild:    f.Get(FormOrgChild),
		OrgSupplier: f.Get(FormOrgSupplier),
		Tenancy:     f.Get(FormTenancy),
		JKT:         jkt,
	}
	if len(spec.Scopes) == 0 {
		spec.Scopes = nil
	}
	if f.Get(FormUser) == "true" {
		spec.PID = orDefault(f.Get(FormPID), DefaultPID)
		spec.SecurityLevel = orDefault(f.Get(FormSecurityLevel), DefaultSecurityLevel)
		spec.AssuranceLevel = f.Get(FormAssuranceLevel)
		spec.HPRNumber = f.Get(FormHPRNumber)
	}
	scopes := spec.Scopes
	if scopes == nil {
		scopes = []string{DefaultScope}
	}

	tok, err := s.Mint(spec)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "DPoP",
		"expires_in":   int64(DefaultLifetime / time.Second),
		"scope":        strings.Join(scopes, " "),
	})
}

func tokenError(w http.ResponseWriter, code, desc string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": desc})
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
