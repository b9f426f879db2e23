package caddymodule

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

const attestPID = "17056600574"

// attestClaim is a trust-framework attest (data model v1.1, wrapped, with
// toa) for the caller attestPID, changed by mod.
func attestClaim(toa time.Time, mod func(practitioner, care map[string]any)) map[string]any {
	practitioner := map[string]any{
		"identifier":    map[string]any{"id": attestPID, "name": "Kari Lege", "system": "urn:oid:2.16.578.1.12.4.1.4.1"},
		"legal_entity":  map[string]any{"id": "917897468", "name": "Helse Vest"},
		"point_of_care": map[string]any{"id": "922734046", "name": "Legevakt"},
		"department":    map[string]any{"id": "4210614", "name": "Akutt"},
	}
	care := map[string]any{
		"healthcare_service": map[string]any{"code": "S03", "text": "Indremedisin"},
		"purpose_of_use":     map[string]any{"code": "TREAT", "text": "Behandling"},
		"decision_ref":       map[string]any{"id": "ref-8c1f", "user_selected": true},
	}
	if mod != nil {
		mod(practitioner, care)
	}
	return map[string]any{
		"attestation": map[string]any{"practitioner": practitioner, "care_relationship": care,
			"patients": []any{map[string]any{"point_of_care": map[string]any{"id": "922734046"}}}},
		"toa": toa.Unix(),
	}
}

// attestSpec is a level-4 user token carrying claim.
func attestSpec(claim any) helseidsim.TokenSpec {
	return helseidsim.TokenSpec{OrgParent: "917897468", OrgChild: "922734046", PID: attestPID, SecurityLevel: "4",
		Extra: map[string]any{authz.ClaimAttest: claim}}
}

// A validated attest's codes and ids reach the upstream, the placeholders
// and the audit entry; inbound copies never do; the pid never does.
func TestServeHTTPAttestIdentity(t *testing.T) {
	f := newHandlerFixture(t, func(h *Handler) { h.Attest = "required" })
	logs, _ := observe(f.h)
	tok := f.token(t, attestSpec(attestClaim(time.Now().Add(-time.Minute), nil)))
	r := f.request(t, "GET", "http://example.com/fhir/Patient", tok, "http://example.com/fhir/Patient")
	r.Header["X-Helseid-Purpose-Of-Use"] = []string{"BTG"}
	r.Header["x_helseid_legal_entity"] = []string{"999999999"}
	r.Header["X-HELSEID-DECISION-REF"] = []string{"spoof"}
	next := &recordingNext{}
	w := httptest.NewRecorder()
	if err := f.h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if !next.called {
		t.Fatalf("next not called; status %d body %s", w.Code, w.Body)
	}
	want := map[string]string{
		"X-Helseid-Legal-Entity":           "917897468",
		"X-Helseid-Point-Of-Care":          "922734046",
		"X-Helseid-Department":             "4210614",
		"X-Helseid-Purpose-Of-Use":         "TREAT",
		"X-Helseid-Healthcare-Service":     "S03",
		"X-Helseid-Decision-Ref":           "ref-8c1f",
		"X-Helseid-Decision-User-Selected": "true",
		"X-Helseid-Org-Parent":             "917897468",
	}
	for k, v := range want {
		if got := next.header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	for k, vs := range next.header {
		for _, v := range vs {
			if v == "spoof" || v == "BTG" || v == "999999999" || strings.Contains(v, attestPID) && k != "Authorization" {
				t.Errorf("upstream header %s carries %q", k, v)
			}
		}
		if strings.EqualFold(k, "x_helseid_legal_entity") {
			t.Errorf("inbound %s reached the upstream", k)
		}
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for ph, v := range map[string]string{
		"http.auth.user.legal_entity":           "917897468",
		"http.auth.user.point_of_care":          "922734046",
		"http.auth.user.department":             "4210614",
		"http.auth.user.purpose_of_use":         "TREAT",
		"http.auth.user.healthcare_service":     "S03",
		"http.auth.user.decision_ref":           "ref-8c1f",
		"http.auth.user.decision_user_selected": "true",
	} {
		if got, _ := repl.GetString(ph); got != v {
			t.Errorf("{%s} = %q, want %q", ph, got, v)
		}
	}
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d audit entries", len(entries))
	}
	fields := entries[0].ContextMap()
	for k, v := range map[string]string{
		"legal_entity": "917897468", "point_of_care": "922734046", "department": "4210614", "purpose_of_use": "TREAT",
		"healthcare_service": "S03", "decision_ref": "ref-8c1f", "decision_user_selected": "true",
	} {
		if got := fields[k]; got != v {
			t.Errorf("audit %s = %v, want %q", k, got, v)
		}
	}
	b, _ := json.Marshal(fields)
	if strings.Contains(string(b), attestPID) || strings.Contains(string(b), "Kari") {
		t.Errorf("the audit entry carries the pid or a name: %s", b)
	}
}

// A route without attest reads none: no attest headers, no attest audit
// fields, and an attest's legal entity does not stand in for orgnr_parent.
func TestServeHTTPAttestOff(t *testing.T) {
	f := newHandlerFixture(t, nil)
	logs, _ := observe(f.h)
	spec := attestSpec(attestClaim(time.Now().Add(-2*time.Hour), nil))
	spec.OrgParent = ""
	tok := f.token(t, spec)
	r := f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a")
	next := &recordingNext{}
	if err := f.h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if !next.called {
		t.Fatal("next not called")
	}
	for k := range next.header {
		if k == "X-Helseid-Legal-Entity" || k == "X-Helseid-Purpose-Of-Use" || k == "X-Helseid-Org-Parent" {
			t.Errorf("a route without attest set %s", k)
		}
	}
	if _, ok := logs.All()[0].ContextMap()["legal_entity"]; ok {
		t.Error("a route without attest wrote attest fields")
	}
}

// Each attest denial with its status, challenge and body.
func TestServeHTTPAttestDenials(t *testing.T) {
	f := newHandlerFixture(t, func(h *Handler) { h.Attest = "required"; h.Purposes = []string{"ETREAT", "BTG"} })
	algs := `algs="RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512"`
	etreat := func(p, c map[string]any) { c["purpose_of_use"] = map[string]any{"code": "ETREAT"} }
	now := time.Now()
	cases := []struct {
		name      string
		spec      helseidsim.TokenSpec
		status    int
		challenge string
		code      string
		reason    string
		detail    string
	}{
		{"absent", helseidsim.TokenSpec{PID: attestPID, SecurityLevel: "4", OrgParent: "917897468"},
			403, `DPoP error="insufficient_scope"`, "insufficient_scope", "attest_missing", ""},
		{"purpose not accepted", attestSpec(attestClaim(now, nil)),
			403, `DPoP error="insufficient_scope"`, "insufficient_scope", "attest_purpose", ""},
		{"expired", attestSpec(attestClaim(now.Add(-61*time.Minute), etreat)),
			401, `DPoP error="invalid_token", error_description="attestation_has_expired", ` + algs, "invalid_token", "attestation_has_expired", "attestation_has_expired"},
		{"another person", attestSpec(attestClaim(now, func(p, c map[string]any) {
			etreat(p, c)
			p["identifier"] = map[string]any{"id": "01010112345", "system": "urn:oid:2.16.578.1.12.4.1.4.1"}
		})), 401, `DPoP error="invalid_token", error_description="the trust-framework attest does not name the authenticated user", ` + algs, "invalid_token", "attest_not_caller", ""},
		{"malformed", attestSpec(`{"practitioner":`),
			401, `DPoP error="invalid_token", error_description="the trust-framework attest is malformed", ` + algs, "invalid_token", "attest_malformed", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			next := &recordingNext{}
			tok := f.token(t, tc.spec)
			if err := f.h.ServeHTTP(w, f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a"), next); err != nil {
				t.Fatal(err)
			}
			if next.called || w.Code != tc.status {
				t.Fatalf("status %d (upstream called: %v), want %d: %s", w.Code, next.called, tc.status, w.Body)
			}
			if got := w.Header().Get("WWW-Authenticate"); got != tc.challenge {
				t.Fatalf("WWW-Authenticate\n got %s\nwant %s", got, tc.challenge)
			}
			var p problem
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.Error != tc.code || p.Reason != tc.reason || (tc.detail != "" && p.Detail != tc.detail) {
				t.Fatalf("problem body %+v", p)
			}
		})
	}
}

// Config errors of the JSON form (the Caddyfile refuses them when parsing).
func TestProvisionAttestErrors(t *testing.T) {
	for _, h := range []*Handler{
		{Issuer: "https://helseid-sts.test.nhn.no", Audience: "a", Purposes: []string{"BTG"}},
		{Issuer: "https://helseid-sts.test.nhn.no", Audience: "a", AttestMaxAge: caddy.Duration(time.Minute)},
		{Issuer: "https://helseid-sts.test.nhn.no", Audience: "a", Attest: "always"},
		{Issuer: "https://helseid-sts.test.nhn.no", Audience: "a", Attest: "required", Purposes: []string{"BTG", "BTG"}},
	} {
		if _, err := h.authzConfig(); err == nil {
			cfg, _ := h.authzConfig()
			if err := cfg.Validate(); err == nil {
				t.Errorf("%+v: no error", h)
			}
		}
	}
}
