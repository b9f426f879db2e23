package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// The trust-framework attest through the real binary: every denial with its
// status, challenge and body; what the upstream and the audit log get; the
// organization taken from the attest alone reaching the registry.

// attestOf is an attest for the caller testPID (data model v1.1, wrapped,
// with toa), changed by mod.
func attestOf(toa time.Time, mod func(practitioner, care map[string]any)) map[string]any {
	practitioner := map[string]any{
		"identifier":    map[string]any{"id": testPID, "name": "Kari Lege", "system": "urn:oid:2.16.578.1.12.4.1.4.1"},
		"hpr_nr":        map[string]any{"id": testHPR, "system": "urn:oid:2.16.578.1.12.4.1.4.4"},
		"legal_entity":  map[string]any{"id": orgParent, "name": "Helse Vest", "system": "urn:oid:2.16.578.1.12.4.1.4.101"},
		"point_of_care": map[string]any{"id": orgChild, "name": "Legevakt", "system": "urn:oid:2.16.578.1.12.4.1.4.101"},
		"department":    map[string]any{"id": "4210614", "name": "Akutt", "system": "urn:oid:2.16.578.1.12.4.1.4.102"},
	}
	care := map[string]any{
		"healthcare_service": map[string]any{"code": "S03", "text": "Indremedisin"},
		"purpose_of_use":     map[string]any{"code": "TREAT", "text": "Behandling", "system": "urn:oid:2.16.840.1.113883.1.11.20448"},
		"decision_ref":       map[string]any{"id": "ref-8c1f", "user_selected": true},
	}
	if mod != nil {
		mod(practitioner, care)
	}
	return map[string]any{
		"attestation": map[string]any{"practitioner": practitioner, "care_relationship": care},
		"toa":         toa.Unix(),
	}
}

// purpose sets purpose_of_use.code.
func purpose(code string) func(p, c map[string]any) {
	return func(p, c map[string]any) { c["purpose_of_use"] = map[string]any{"code": code} }
}

// userWith is a level-4 user token carrying claim as the attest (nil: none).
func userWith(claim any) helseidsim.TokenSpec {
	s := helseidsim.TokenSpec{PID: testPID, SecurityLevel: "4", HPRNumber: testHPR, OrgChild: orgChild}
	if claim != nil {
		s.Extra = map[string]any{authz.ClaimAttest: claim}
	}
	return s
}

// attestGW is a gateway with attest routes in front of a registry:
//
//	/kj/*     attest required, membership (org parent)
//	/akutt/*  attest required, purposes ETREAT BTG, attest_max_age 10m
//	/opt/*    attest optional
//	/child/*  attest required, membership with org child
//	/plain/*  no attest
func attestGW(t *testing.T) (*gateway, *upstream, *registrysim.Server) {
	t.Helper()
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(orgParent), active(orgChild)}})
	up := newUpstream(t)
	iss := sharedSim.Issuer()
	route := func(matcher string, extra ...string) string {
		return fmt.Sprintf("handle %s {\n%s\treverse_proxy %s\n}\n", matcher, indent(helseid(iss, extra...)), up.URL())
	}
	g := startGateway(t, 1, func(addrs []string) string {
		site := route("/kj/*", "attest required", membershipBlock("registry "+reg.URL())) +
			route("/akutt/*", "attest required", "attest_max_age 10m", "purposes ETREAT BTG") +
			route("/opt/*", "attest optional") +
			route("/child/*", "attest required", membershipBlock("registry "+reg.URL(), "org child")) +
			route("/plain/*")
		return fmt.Sprintf("http://%s {\n%s}\n", addrs[0], indent(site))
	})
	return g, up, reg
}

func TestAttestEndToEnd(t *testing.T) {
	g, up, reg := attestGW(t)
	c := newCaller(t, sharedSim)
	now := time.Now()
	algs := `, algs="` + defaultAlgs + `"`
	invalidToken := func(desc string) string { return `DPoP error="invalid_token", error_description="` + desc + `"` + algs }
	const scopeChallenge = `DPoP error="insufficient_scope"`

	t.Run("denials", func(t *testing.T) {
		noParent := func(s helseidsim.TokenSpec) helseidsim.TokenSpec {
			s.Extra[helseidsim.ClaimOrgParent] = nil
			return s
		}
		cases := []struct {
			name      string
			path      string
			spec      helseidsim.TokenSpec
			status    int
			code      string
			challenge string
			reason    string
		}{
			{"required and absent", "/kj/a", userWith(nil), 403, "insufficient_scope", scopeChallenge, "attest_missing"},
			{"purpose the route does not take", "/akutt/a", userWith(attestOf(now, nil)), 403, "insufficient_scope", scopeChallenge, "attest_purpose"},
			{"expired (ATT-58)", "/kj/a", userWith(attestOf(now.Add(-61*time.Minute), nil)), 401, "invalid_token", invalidToken("attestation_has_expired"), "attestation_has_expired"},
			{"expired under the route's attest_max_age", "/akutt/a", userWith(attestOf(now.Add(-11*time.Minute), purpose("BTG"))), 401, "invalid_token", invalidToken("attestation_has_expired"), "attestation_has_expired"},
			{"another person's (ATT-11)", "/kj/a", userWith(attestOf(now, func(p, c map[string]any) {
				p["identifier"] = map[string]any{"id": "01010112345", "system": "urn:oid:2.16.578.1.12.4.1.4.1"}
			})), 401, "invalid_token", invalidToken("the trust-framework attest does not name the authenticated user"), "attest_not_caller"},
			{"not an F- or D-number (ATT-10)", "/kj/a", userWith(attestOf(now, func(p, c map[string]any) {
				p["identifier"] = map[string]any{"id": testPID, "system": "urn:oid:2.16.578.1.12.4.1.4.4"}
			})), 401, "invalid_token", invalidToken("the trust-framework attest does not identify the user by an F- or D-number"), "attest_identifier_system"},
			{"machine token (ATT-9)", "/kj/a", helseidsim.TokenSpec{Extra: map[string]any{authz.ClaimAttest: attestOf(now, nil)}}, 403, "insufficient_scope", scopeChallenge, "attest_not_user"},
			{"security level 3 (ATT-9)", "/kj/a", func() helseidsim.TokenSpec { s := userWith(attestOf(now, nil)); s.SecurityLevel = "3"; return s }(), 403, "insufficient_scope", scopeChallenge, "attest_security_level"},
			{"legal entity is not orgnr_parent", "/kj/a", userWith(attestOf(now, func(p, c map[string]any) {
				p["legal_entity"] = map[string]any{"id": orgChild}
			})), 401, "invalid_token", invalidToken("the trust-framework attest names another legal entity than the token"), "attest_org_mismatch"},
			{"invalid org number", "/kj/a", noParent(userWith(attestOf(now, func(p, c map[string]any) {
				p["legal_entity"] = map[string]any{"id": "917897469"}
			}))), 401, "invalid_token", invalidToken("the trust-framework attest names an invalid organization number"), "attest_org_invalid"},
			{"toa in the future", "/kj/a", userWith(attestOf(now.Add(time.Hour), nil)), 401, "invalid_token", invalidToken("the trust-framework attest is dated in the future"), "attest_toa_future"},
			// A duplicate anywhere in the token: the strict claims reader
			// refuses the whole token before the attest is read.
			{"a duplicate member", "/opt/a", userWith(json.RawMessage(`{"practitioner":{"identifier":{"id":"` + testPID + `","id":"01010112345"}}}`)),
				401, "invalid_token", invalidToken("the access token claims are malformed"), "token_claims"},
			{"a case-variant member", "/opt/a", userWith(json.RawMessage(`{"Practitioner":{}}`)),
				401, "invalid_token", invalidToken("the trust-framework attest is malformed"), "attest_malformed"},
			{"a string holding no object", "/opt/a", userWith("[]"), 401, "invalid_token", invalidToken("the trust-framework attest is malformed"), "attest_malformed"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				up.reset()
				r, tok := c.doSpec(t, "GET", g.url(0, tc.path), tc.spec)
				expectProblem(t, r, tc.status, tc.code, tok, testPID)
				expectChallenge(t, r, tc.challenge)
				var body map[string]any
				_ = json.Unmarshal([]byte(r.body), &body)
				if want := tc.reason; authz.IsAttestReason(want) && body["reason"] != want || !authz.IsAttestReason(want) && body["reason"] != nil {
					t.Errorf("body reason %v, want %q (attest reasons only): %s", body["reason"], want, r.body)
				}
				if tc.reason == "attestation_has_expired" && body["detail"] != "attestation_has_expired" {
					t.Errorf("body detail %v, want attestation_has_expired", body["detail"])
				}
				g.expectReason(t, "deny", tc.reason)
				if hits, _, _, _ := up.last(); hits != 0 {
					t.Error("a denied request reached the upstream")
				}
			})
		}
		// No pid in any line the gateway logged, the denials' included.
		if b, err := os.ReadFile(g.errPath); err != nil {
			t.Fatal(err)
		} else if strings.Contains(string(b), testPID) {
			t.Error("the pid is in the gateway's log")
		}
	})

	t.Run("accepted: the upstream and the audit log get the codes and ids", func(t *testing.T) {
		for name, claim := range map[string]any{
			"object": attestOf(now.Add(-time.Minute), nil),
			"string": func() string { b, _ := json.Marshal(attestOf(now.Add(-time.Minute), nil)); return string(b) }(),
		} {
			t.Run(name, func(t *testing.T) {
				up.reset()
				tok := c.token(t, userWith(claim))
				h := dpopHeaders(tok, c.proof(t, "GET", g.url(0, "/kj/fhir/Patient"), tok, dpopclient.ProofOptions{}))
				h["X-Helseid-Purpose-Of-Use"] = []string{"BTG"}
				h["x_helseid_legal_entity"] = []string{"999999999"}
				h["X-HELSEID-DECISION-USER-SELECTED"] = []string{"false"}
				r := send(t, "GET", g.url(0, "/kj/fhir/Patient"), h)
				expectOK(t, r)
				_, _, _, hdr := up.last()
				for k, v := range map[string]string{
					"X-Helseid-Legal-Entity":           orgParent,
					"X-Helseid-Point-Of-Care":          orgChild,
					"X-Helseid-Department":             "4210614",
					"X-Helseid-Purpose-Of-Use":         "TREAT",
					"X-Helseid-Healthcare-Service":     "S03",
					"X-Helseid-Decision-Ref":           "ref-8c1f",
					"X-Helseid-Decision-User-Selected": "true",
					"X-Helseid-Org-Parent":             orgParent,
					"X-Helseid-Membership":             service,
				} {
					if got := hdr.Values(k); len(got) != 1 || got[0] != v {
						t.Errorf("upstream %s = %q, want %q", k, got, v)
					}
				}
				for k, vs := range hdr {
					if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), "x-helseid-legal-entity") && k != "X-Helseid-Legal-Entity" {
						t.Errorf("an inbound %s reached the upstream", k)
					}
					for _, v := range vs {
						if k != "Authorization" && strings.Contains(v, testPID) {
							t.Errorf("upstream header %s carries the pid", k)
						}
					}
				}
				g.expectReason(t, "allow", "member")
				e := g.lastAudit()
				for k, v := range map[string]string{
					"legal_entity": orgParent, "point_of_care": orgChild, "department": "4210614", "purpose_of_use": "TREAT",
					"healthcare_service": "S03", "decision_ref": "ref-8c1f", "decision_user_selected": "true",
				} {
					if e[k] != v {
						t.Errorf("audit %s = %v, want %q", k, e[k], v)
					}
				}
				b, _ := json.Marshal(e)
				if strings.Contains(string(b), testPID) || strings.Contains(string(b), "Kari") {
					t.Errorf("the audit entry carries the pid or a name: %s", b)
				}
			})
		}
	})

	t.Run("the org from the attest alone reaches the registry", func(t *testing.T) {
		member, stranger := newOrg(t), newOrg(t)
		reg.Set(active(member))
		only := func(org string) helseidsim.TokenSpec {
			s := userWith(attestOf(now, func(p, c map[string]any) { p["legal_entity"] = map[string]any{"id": org} }))
			s.Extra[helseidsim.ClaimOrgParent] = nil
			return s
		}
		up.reset()
		before := reg.Calls()
		r, _ := c.doSpec(t, "GET", g.url(0, "/kj/a"), only(member))
		expectMemberOK(t, up, r)
		if reg.Calls() == before {
			t.Error("the registry was not asked")
		}
		if _, _, _, h := up.last(); h.Get("X-Helseid-Org-Parent") != member || h.Get("X-Helseid-Legal-Entity") != member {
			t.Errorf("upstream org parent %q, legal entity %q; want %s", h.Get("X-Helseid-Org-Parent"), h.Get("X-Helseid-Legal-Entity"), member)
		}
		if e := g.lastAudit(); e["org_parent"] != member {
			t.Errorf("audit org_parent %v, want %s", e["org_parent"], member)
		}
		r, tok := c.doSpec(t, "GET", g.url(0, "/kj/a"), only(stranger))
		expectNotMember(t, g, r, tok, stranger, "not_member")
	})

	t.Run("point of care for org child", func(t *testing.T) {
		poc := newOrg(t)
		reg.Set(active(poc))
		s := userWith(attestOf(now, func(p, c map[string]any) { p["point_of_care"] = map[string]any{"id": poc} }))
		s.OrgChild = ""
		up.reset()
		r, _ := c.doSpec(t, "GET", g.url(0, "/child/a"), s)
		expectMemberOK(t, up, r)
		if _, _, _, h := up.last(); h.Get("X-Helseid-Org-Child") != poc {
			t.Errorf("upstream org child %q, want %s", h.Get("X-Helseid-Org-Child"), poc)
		}
	})

	t.Run("optional: absent is fine", func(t *testing.T) {
		up.reset()
		r, _ := c.doSpec(t, "GET", g.url(0, "/opt/a"), userWith(nil))
		expectOK(t, r)
		if _, _, _, h := up.last(); h.Get("X-Helseid-Purpose-Of-Use") != "" {
			t.Error("an attest header without an attest")
		}
	})

	t.Run("a route without attest is unchanged", func(t *testing.T) {
		up.reset()
		s := userWith(attestOf(now.Add(-3*time.Hour), nil)) // stale: not read here
		s.Extra[helseidsim.ClaimOrgParent] = nil
		r, _ := c.doSpec(t, "GET", g.url(0, "/plain/a"), s)
		expectOK(t, r)
		_, _, _, h := up.last()
		for _, k := range []string{"X-Helseid-Legal-Entity", "X-Helseid-Purpose-Of-Use", "X-Helseid-Org-Parent"} {
			if h.Get(k) != "" {
				t.Errorf("a route without attest set %s", k)
			}
		}
		if e := g.lastAudit(); e["legal_entity"] != nil {
			t.Errorf("a route without attest logged attest fields: %v", e)
		}
	})
}
