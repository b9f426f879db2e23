package authz

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

const (
	attestPID      = "17056600574"
	attestLegal    = "917897468" // the fixture's orgnr_parent
	attestPoC      = "922734046" // the fixture's orgnr_child
	attestOtherOrg = "974600951"
	attestThirdOrg = "984432518"
)

// goodAttest is an attest of data model v1.1's shape without the wrapper:
// the caller's own, for the fixture's organizations, for treatment.
func goodAttest() map[string]any {
	return map[string]any{
		"practitioner": map[string]any{
			"identifier":    map[string]any{"id": attestPID, "name": "Kari Lege", "system": "urn:oid:" + oidFNumber, "authority": "Skatteetaten"},
			"hpr_nr":        map[string]any{"id": "565501872", "system": "urn:oid:2.16.578.1.12.4.1.4.4", "authority": "Helsedirektoratet"},
			"authorization": map[string]any{"code": "LE", "text": "Lege", "system": "urn:oid:2.16.578.1.12.4.1.1.9060", "assigner": "Helsedirektoratet"},
			"legal_entity":  map[string]any{"id": attestLegal, "name": "Helse Vest", "system": "urn:oid:2.16.578.1.12.4.1.4.101", "authority": "Brønnøysund"},
			"point_of_care": map[string]any{"id": attestPoC, "name": "Legevakt", "system": "urn:oid:2.16.578.1.12.4.1.4.101", "authority": "Brønnøysund"},
			"department":    map[string]any{"id": "4210614", "name": "Akutt", "system": "urn:oid:2.16.578.1.12.4.1.4.102", "authority": "Helsedirektoratet"},
		},
		"care_relationship": map[string]any{
			"healthcare_service":     map[string]any{"code": "S03", "text": "Indremedisin", "system": "urn:oid:2.16.578.1.12.4.1.1.8666", "assigner": "Helsedirektoratet"},
			"purpose_of_use":         map[string]any{"code": "TREAT", "text": "Behandling", "system": "urn:oid:2.16.840.1.113883.1.11.20448", "assigner": "HL7"},
			"purpose_of_use_details": map[string]any{"code": "15", "text": "Akutt", "system": "urn:AuditEventHL7Norway/CodeSystem/carerelation", "assigner": "HL7 Norge"},
			"decision_ref":           map[string]any{"id": "ref-8c1f", "user_selected": true},
		},
		"patients": []any{map[string]any{"point_of_care": map[string]any{"id": attestPoC}}},
	}
}

// wrapped puts an attest in data model v1.1's attestation wrapper with toa.
func wrapped(a map[string]any, toa time.Time) map[string]any {
	return map[string]any{"attestation": a, "toa": toa.Unix()}
}

// asString is the string encoding: the attest's JSON text as a JSON string.
func asString(t testing.TB, a map[string]any) string {
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// set changes one member at a dotted path of an attest ("practitioner.identifier.id");
// a nil value deletes it.
func set(a map[string]any, path string, v any) map[string]any {
	parts := strings.Split(path, ".")
	m := a
	for _, p := range parts[:len(parts)-1] {
		m = m[p].(map[string]any)
	}
	if v == nil {
		delete(m, parts[len(parts)-1])
	} else {
		m[parts[len(parts)-1]] = v
	}
	return a
}

// userAttest makes the token a level-4 user token carrying attest (any JSON
// value: a map, a string, or json.RawMessage for exact text).
func userAttest(attest any) func(h, c map[string]any) {
	return func(h, c map[string]any) {
		c[ClaimPID] = attestPID
		c[ClaimSecurityLevel] = "4"
		c["sub"] = "tzto6g"
		if attest != nil {
			c[ClaimAttest] = attest
		}
	}
}

func attestOn(mode AttestMode) func(*Config) {
	return func(c *Config) { c.Attest = mode }
}

// rawPayload builds a request whose token payload is exactly payload, a
// user token at level 4 for the fixture, with {ATTEST} replaced by attest.
func rawPayload(attest string) func(f *fixture) Request {
	return func(f *fixture) Request {
		c := f.tokenClaims()
		userAttest(nil)(nil, c)
		b, _ := json.Marshal(c)
		payload := strings.TrimSuffix(string(b), "}") + "," + attest + "}"
		tok := signPayload(f.t, tokenHeader(), []byte(payload), issuerPriv)
		return f.request(tok, f.proof(tok, nil))
	}
}

// Every rule of the attest, each with the case that passes beside the one
// that fails: removing a check makes its failing case pass.
func TestAttestRules(t *testing.T) {
	old := testNow.Add(-61 * time.Minute)
	runCases(t, []verifyCase{
		// Both encodings, with and without the wrapper and toa.
		{name: "object", cfg: attestOn(AttestRequired), req: withToken(userAttest(goodAttest()))},
		{name: "string", cfg: attestOn(AttestRequired), req: withToken(userAttest(asString(t, goodAttest())))},
		{name: "wrapper with toa", cfg: attestOn(AttestRequired), req: withToken(userAttest(wrapped(goodAttest(), testNow.Add(-time.Minute))))},
		{name: "wrapper with toa, string", cfg: attestOn(AttestRequired), req: withToken(userAttest(asString(t, wrapped(goodAttest(), testNow.Add(-time.Minute)))))},
		{name: "wrapper without toa", cfg: attestOn(AttestRequired), req: withToken(userAttest(map[string]any{"attestation": goodAttest()}))},
		{name: "toa inside the wrapper", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(map[string]any{"attestation": set(goodAttest(), "toa", testNow.Unix())}))},
		{name: "toa without the wrapper", cfg: attestOn(AttestRequired), req: withToken(userAttest(set(goodAttest(), "toa", testNow.Unix())))},

		// Required, optional, off.
		{name: "required and absent", cfg: attestOn(AttestRequired), req: withToken(userAttest(nil)), class: InsufficientScope, reason: "attest_missing"},
		{name: "required and null", cfg: attestOn(AttestRequired), req: withToken(userAttest(json.RawMessage("null"))), class: InsufficientScope, reason: "attest_missing"},
		{name: "optional and absent", cfg: attestOn(AttestOptional), req: withToken(userAttest(nil))},
		{name: "optional and absent on a machine token", cfg: attestOn(AttestOptional), req: withToken(nil)},
		{name: "optional validates what is present", cfg: attestOn(AttestOptional),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.id", "01010112345"))), class: InvalidToken, reason: "attest_not_caller"},
		{name: "off: not read", req: withToken(userAttest(json.RawMessage(`"not an attest"`)))},

		// ATT-9: a user token at security level 4.
		{name: "ATT-9 machine token", cfg: attestOn(AttestRequired),
			req: withToken(func(h, c map[string]any) { c[ClaimAttest] = goodAttest() }), class: InsufficientScope, reason: "attest_not_user"},
		{name: "ATT-9 level 3", cfg: attestOn(AttestRequired),
			req: withToken(func(h, c map[string]any) { userAttest(goodAttest())(h, c); c[ClaimSecurityLevel] = "3" }), class: InsufficientScope, reason: "attest_security_level"},
		{name: "ATT-9 no level", cfg: attestOn(AttestRequired),
			req: withToken(func(h, c map[string]any) { userAttest(goodAttest())(h, c); delete(c, ClaimSecurityLevel) }), class: InsufficientScope, reason: "attest_security_level"},

		// ATT-11: the practitioner is the caller.
		{name: "ATT-11 another person", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.id", "01010112345"))), class: InvalidToken, reason: "attest_not_caller"},
		{name: "ATT-11 no identifier id", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.id", nil))), class: InvalidToken, reason: "attest_not_caller"},
		{name: "ATT-11 no practitioner", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner", nil))), class: InvalidToken, reason: "attest_not_caller"},

		// ATT-10: an F- or D-number.
		{name: "ATT-10 D-number", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.system", "urn:oid:"+oidDNumber)))},
		{name: "ATT-10 bare OID", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.system", oidFNumber)))},
		{name: "ATT-10 HPR system", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.system", "urn:oid:2.16.578.1.12.4.1.4.4"))), class: InvalidToken, reason: "attest_identifier_system"},
		{name: "ATT-10 no system", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.identifier.system", nil))), class: InvalidToken, reason: "attest_identifier_system"},

		// Org numbers, and the legal entity is the token's.
		{name: "legal entity fails mod 11", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.legal_entity.id", "917897469"))), class: InvalidToken, reason: "attest_org_invalid"},
		{name: "point of care not 9 digits", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.point_of_care.id", "92273404"))), class: InvalidToken, reason: "attest_org_invalid"},
		{name: "legal entity is not orgnr_parent", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "practitioner.legal_entity.id", attestOtherOrg))), class: InvalidToken, reason: "attest_org_mismatch"},
		{name: "legal entity without orgnr_parent", cfg: attestOn(AttestRequired),
			req: withToken(func(h, c map[string]any) {
				userAttest(set(goodAttest(), "practitioner.legal_entity.id", attestOtherOrg))(h, c)
				delete(c, ClaimOrgParent)
			})},
		{name: "no legal entity", cfg: attestOn(AttestRequired), req: withToken(userAttest(set(goodAttest(), "practitioner.legal_entity", nil)))},

		// ATT-58: toa not older than attest_max_age, with clock_skew.
		{name: "ATT-58 61 minutes", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(wrapped(goodAttest(), old))), class: InvalidToken, reason: "attestation_has_expired"},
		{name: "ATT-58 60 minutes and the skew", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(wrapped(goodAttest(), testNow.Add(-60*time.Minute-DefaultClockSkew))))},
		{name: "ATT-58 just past the skew", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(wrapped(goodAttest(), testNow.Add(-60*time.Minute-DefaultClockSkew-time.Second)))), class: InvalidToken, reason: "attestation_has_expired"},
		{name: "ATT-58 attest_max_age narrowed", cfg: func(c *Config) { c.Attest = AttestRequired; c.AttestMaxAge = 5 * time.Minute },
			req: withToken(userAttest(wrapped(goodAttest(), testNow.Add(-6*time.Minute)))), class: InvalidToken, reason: "attestation_has_expired"},
		{name: "ATT-58 string encoding", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(asString(t, wrapped(goodAttest(), old)))), class: InvalidToken, reason: "attestation_has_expired"},
		{name: "toa in the future", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(wrapped(goodAttest(), testNow.Add(time.Minute)))), class: InvalidToken, reason: "attest_toa_future"},
		{name: "toa within the skew ahead", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(wrapped(goodAttest(), testNow.Add(DefaultClockSkew))))},

		// Purposes.
		{name: "purpose BTG by default", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "care_relationship.purpose_of_use.code", "BTG")))},
		{name: "purpose not accepted", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "care_relationship.purpose_of_use.code", "HRESCH"))), class: InsufficientScope, reason: "attest_purpose"},
		{name: "purpose narrowed", cfg: func(c *Config) { c.Attest = AttestRequired; c.Purposes = []string{"ETREAT", "BTG"} },
			req: withToken(userAttest(goodAttest())), class: InsufficientScope, reason: "attest_purpose"},
		{name: "purpose narrowed, accepted", cfg: func(c *Config) { c.Attest = AttestRequired; c.Purposes = []string{"ETREAT", "BTG"} },
			req: withToken(userAttest(set(goodAttest(), "care_relationship.purpose_of_use.code", "ETREAT")))},
		{name: "purpose absent", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "care_relationship.purpose_of_use", nil))), class: InsufficientScope, reason: "attest_purpose"},
		{name: "purpose is case-sensitive", cfg: attestOn(AttestRequired),
			req: withToken(userAttest(set(goodAttest(), "care_relationship.purpose_of_use.code", "treat"))), class: InsufficientScope, reason: "attest_purpose"},

		// Strict reading, through the verifier.
		{name: "malformed: a number", cfg: attestOn(AttestRequired), req: withToken(userAttest(42)), class: InvalidToken, reason: "attest_malformed"},
		{name: "malformed: an array", cfg: attestOn(AttestRequired), req: withToken(userAttest([]any{goodAttest()})), class: InvalidToken, reason: "attest_malformed"},
		{name: "malformed: a string of garbage", cfg: attestOn(AttestOptional), req: withToken(userAttest("{not json")), class: InvalidToken, reason: "attest_malformed"},
		// A duplicate anywhere in the token is refused by the strict claims
		// reader before the attest is read.
		{name: "malformed: claim twice", cfg: attestOn(AttestRequired),
			req: rawPayload(`"` + ClaimAttest + `":{},"` + ClaimAttest + `":` + asString(t, goodAttest())), class: InvalidToken, reason: "token_claims"},
		{name: "malformed: claim in another case", cfg: attestOn(AttestOptional),
			req: rawPayload(`"NHN:tillitsrammeverk:parameters":{}`), class: InvalidToken, reason: "attest_malformed"},
		{name: "malformed: a duplicate member", cfg: attestOn(AttestRequired),
			req:   rawPayload(`"` + ClaimAttest + `":` + strings.Replace(asString(t, goodAttest()), `"id":"`+attestPID+`"`, `"id":"`+attestPID+`","id":"01010112345"`, 1)),
			class: InvalidToken, reason: "token_claims"},
		{name: "the claim read from raw text", cfg: attestOn(AttestRequired), req: rawPayload(`"` + ClaimAttest + `":` + asString(t, goodAttest()))},
	})
}

// What a validated attest puts on the principal, and the organization it
// stands in for.
func TestAttestPrincipal(t *testing.T) {
	want := Attest{LegalEntity: attestLegal, PointOfCare: attestPoC, Department: "4210614", PurposeOfUse: "TREAT",
		HealthcareService: "S03", DecisionRef: "ref-8c1f", DecisionUserSelected: "true"}
	for _, tc := range []struct {
		name            string
		mod             func(h, c map[string]any)
		parent, child   string
		wantAttest      Attest
		mode            AttestMode
		attestInPayload bool
	}{
		{name: "flat claims and attest", mod: userAttest(goodAttest()), parent: attestLegal, child: attestPoC, wantAttest: want, mode: AttestRequired},
		{name: "org from the attest alone", mod: func(h, c map[string]any) {
			a := set(set(goodAttest(), "practitioner.legal_entity.id", attestOtherOrg), "practitioner.point_of_care.id", attestThirdOrg)
			userAttest(a)(h, c)
			delete(c, ClaimOrgParent)
			delete(c, ClaimOrgChild)
		}, parent: attestOtherOrg, child: attestThirdOrg, mode: AttestRequired,
			wantAttest: func() Attest { w := want; w.LegalEntity, w.PointOfCare = attestOtherOrg, attestThirdOrg; return w }()},
		{name: "orgnr_child kept over point of care", mod: func(h, c map[string]any) {
			userAttest(set(goodAttest(), "practitioner.point_of_care.id", attestThirdOrg))(h, c)
		}, parent: attestLegal, child: attestPoC, mode: AttestRequired,
			wantAttest: func() Attest { w := want; w.PointOfCare = attestThirdOrg; return w }()},
		{name: "user_selected false", mod: userAttest(set(goodAttest(), "care_relationship.decision_ref.user_selected", false)),
			parent: attestLegal, child: attestPoC, mode: AttestRequired,
			wantAttest: func() Attest { w := want; w.DecisionUserSelected = "false"; return w }()},
		{name: "route without attest: nothing read", mod: func(h, c map[string]any) {
			userAttest(goodAttest())(h, c)
			delete(c, ClaimOrgParent)
		}, parent: "", child: attestPoC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, attestOn(tc.mode))
			tok := f.token(tc.mod)
			p := f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
			if p.Attest != tc.wantAttest {
				t.Errorf("attest\n got %+v\nwant %+v", p.Attest, tc.wantAttest)
			}
			if p.OrgParent != tc.parent || p.OrgChild != tc.child {
				t.Errorf("orgs %q %q, want %q %q", p.OrgParent, p.OrgChild, tc.parent, tc.child)
			}
		})
	}
}

// The org from the attest reaches the membership check.
func TestAttestOrgForMembership(t *testing.T) {
	f := newFixture(t, attestOn(AttestRequired))
	tok := f.token(func(h, c map[string]any) {
		userAttest(set(goodAttest(), "practitioner.legal_entity.id", attestOtherOrg))(h, c)
		delete(c, ClaimOrgParent)
	})
	p := f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
	var asked string
	m := &MembershipCheck{Service: "kjernejournal", Rule: OrgParent, Clock: ClockFunc(func() time.Time { return testNow }),
		Source: membershipFunc(func(service, org string) Answer {
			asked = org
			return Answer{Record: &Authorization{Organization: org, Service: service, Member: true, Status: "active"}, FetchedAt: testNow}
		})}
	if derr := m.Check(t.Context(), p); derr != nil {
		t.Fatal(derr)
	}
	if asked != attestOtherOrg {
		t.Fatalf("the registry was asked about %q, want the attest's legal entity %q", asked, attestOtherOrg)
	}
}

// The attest, once read, is cached with the token: a second request with
// the same token is judged the same way (the toa again, at the new time).
func TestAttestCachedToken(t *testing.T) {
	f := newFixture(t, attestOn(AttestRequired))
	tok := f.token(userAttest(wrapped(goodAttest(), testNow.Add(-59*time.Minute))))
	f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
	f.now = f.now.Add(2 * time.Minute)
	f.check(t, f.request(tok, f.proof(tok, nil)), InvalidToken, "attestation_has_expired")
}

// The strict reader on its own: what it accepts and what it refuses.
func TestParseAttest(t *testing.T) {
	good := asString(t, goodAttest())
	deep := strings.Repeat(`{"x":`, maxAttestDepth) + "1" + strings.Repeat("}", maxAttestDepth)
	cases := []struct {
		name string
		raw  string
		err  error // nil = accepted
	}{
		{"object", good, nil},
		{"string", mustJSON(t, good), nil},
		{"string with whitespace around the object", mustJSON(t, "  "+good+"\n"), nil},
		{"wrapper", `{"attestation":` + good + `,"toa":1700000000}`, nil},
		{"toa inside", `{"attestation":{"toa":1700000000}}`, nil},
		{"empty object", `{}`, nil},
		{"unknown members skipped", `{"version":"1.1","practitioner":{"identifier":{"id":"1","extra":[1,{"a":null}]}},"x":{}}`, nil},
		{"null parts", `{"practitioner":null,"care_relationship":null}`, nil},
		{"patients skipped, whatever they hold", `{"patients":[{"identifier":{"id":"01010112345"}}]}`, nil},
		{"at the depth limit", `{"patients":[` + strings.Repeat("[", maxAttestDepth-2) + strings.Repeat("]", maxAttestDepth-2) + `]}`, nil},

		{"a number", `42`, errAttestNotObject},
		{"an array", `[` + good + `]`, errAttestNotObject},
		{"a string holding an array", mustJSON(t, "["+good+"]"), errAttestNotObject},
		{"a string holding two objects", mustJSON(t, good+good), errAttestNotObject},
		{"a string holding a string", mustJSON(t, mustJSON(t, good)), errAttestNotObject},
		{"a string of garbage", mustJSON(t, "{"), errClaimsSyntax},
		{"trailing data", good + `x`, errAttestNotObject},
		{"a bad string", `"{\x"`, errAttestNotObject},

		{"duplicate part", `{"practitioner":{},"practitioner":{}}`, errClaimsDuplicate},
		{"part inside and outside the wrapper", `{"practitioner":{},"attestation":{"practitioner":{}}}`, errClaimsDuplicate},
		{"two wrappers", `{"attestation":{},"attestation":{}}`, errClaimsDuplicate},
		{"toa inside and outside", `{"toa":1,"attestation":{"toa":1}}`, errClaimsDuplicate},
		{"duplicate id", `{"practitioner":{"identifier":{"id":"a","id":"b"}}}`, errClaimsDuplicate},
		{"duplicate element", `{"care_relationship":{"purpose_of_use":{"code":"TREAT"},"purpose_of_use":{"code":"BTG"}}}`, errClaimsDuplicate},
		{"duplicate user_selected", `{"care_relationship":{"decision_ref":{"user_selected":true,"user_selected":false}}}`, errClaimsDuplicate},
		{"duplicate text", `{"practitioner":{"identifier":{"name":"a","name":"b"}}}`, errClaimsDuplicate},
		{"duplicate patients", `{"patients":[],"patients":[]}`, errClaimsDuplicate},
		{"parts split between the wrapper and the top", `{"practitioner":{},"attestation":{"care_relationship":{}}}`, errAttestSplit},
		{"a part beside the wrapper, after it", `{"attestation":{"practitioner":{}},"care_relationship":{}}`, errAttestSplit},
		{"a wrapper in the wrapper", `{"attestation":{"attestation":{}}}`, errAttestSplit},

		{"case variant part", `{"Practitioner":{}}`, errAttestCase},
		{"case variant beside the part", `{"practitioner":{},"PRACTITIONER":{}}`, errAttestCase},
		{"case variant id", `{"practitioner":{"identifier":{"ID":"a"}}}`, errAttestCase},
		{"case variant wrapper", `{"Attestation":{}}`, errAttestCase},
		{"case variant toa", `{"TOA":1}`, errAttestCase},
		{"case variant code", `{"care_relationship":{"purpose_of_use":{"Code":"BTG"}}}`, errAttestCase},

		{"id a number", `{"practitioner":{"identifier":{"id":17056600574}}}`, errClaimsType},
		{"code an object", `{"care_relationship":{"purpose_of_use":{"code":{}}}}`, errClaimsType},
		{"name a number", `{"practitioner":{"identifier":{"name":1}}}`, errClaimsType},
		{"user_selected a string", `{"care_relationship":{"decision_ref":{"user_selected":"true"}}}`, errClaimsType},
		{"toa a string", `{"toa":"1700000000"}`, errClaimsType},
		{"toa negative", `{"toa":-1}`, errNumericDate},
		{"practitioner an array", `{"practitioner":[]}`, errClaimsType},
		{"attestation a string", `{"attestation":"{}"}`, errClaimsType},
		{"patients an object", `{"patients":{}}`, errClaimsType},
		{"element a string", `{"practitioner":{"legal_entity":"917897468"}}`, errClaimsType},

		{"a newline in an id", `{"practitioner":{"department":{"id":"a\nb"}}}`, errAttestValue},
		{"a DEL in a code", `{"care_relationship":{"purpose_of_use":{"code":"TREAT\u007f"}}}`, errAttestValue},
		{"an id too long", `{"care_relationship":{"decision_ref":{"id":"` + strings.Repeat("a", maxAttestValue+1) + `"}}}`, errAttestValue},
		{"invalid UTF-8", "{\"practitioner\":{\"identifier\":{\"id\":\"\xff\"}}}", errClaimsUTF8},

		{"too deep", `{"patients":[` + deep + `]}`, errAttestDepth},
		{"too deep in an unknown member", `{"x":` + deep + `}`, errAttestDepth},
		{"too deep inside the string", mustJSON(t, `{"x":`+deep+`}`), errAttestDepth},
		{"too large", `{"x":"` + strings.Repeat("a", MaxAttestSize) + `"}`, errAttestTooLarge},
		{"too large as a string", mustJSON(t, `{"x":"`+strings.Repeat("a", MaxAttestSize)+`"}`), errAttestTooLarge},
		{"unbalanced", `{"x":[}`, errClaimsSyntax},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseAttest([]byte(tc.raw))
			if !errors.Is(err, tc.err) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
		})
	}
}

// The two encodings and the two shapes read the same.
func TestParseAttestShapesAgree(t *testing.T) {
	obj := asString(t, goodAttest())
	want, err := parseAttest([]byte(obj))
	if err != nil {
		t.Fatal(err)
	}
	if want.practitionerID != attestPID || want.practitionerSystem != "urn:oid:"+oidFNumber || want.hasTOA {
		t.Fatalf("read %+v", want)
	}
	for name, raw := range map[string]string{
		"string":          mustJSON(t, obj),
		"wrapper":         `{"attestation":` + obj + `}`,
		"wrapper, string": mustJSON(t, `{"attestation":`+obj+`}`),
	} {
		got, err := parseAttest([]byte(raw))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got.hasWrapper, got.partsAtTop = false, want.partsAtTop
		if got != want {
			t.Errorf("%s: read\n %+v\nwant %+v", name, got, want)
		}
	}
}

// findClaim reads the claim from a payload, refusing it twice or in
// another case.
func TestFindClaim(t *testing.T) {
	for _, tc := range []struct {
		payload, raw string
		found        bool
		err          error
	}{
		{`{"a":1,"` + ClaimAttest + `":{"b":[1]},"c":2}`, `{"b":[1]}`, true, nil},
		{`{"` + ClaimAttest + `":"x"}`, `"x"`, true, nil},
		{`{"` + ClaimAttest + `":null}`, "", false, nil},
		{`{"a":1}`, "", false, nil},
		{`{"` + ClaimAttest + `":1,"` + ClaimAttest + `":2}`, "", false, errAttestClaim},
		{`{"nhn:Tillitsrammeverk:parameters":1}`, "", false, errAttestClaim},
		{`[]`, "", false, errClaimsNotObject},
		{`{"a":1} x`, "", false, errClaimsSyntax},
	} {
		raw, found, err := findClaim([]byte(tc.payload), ClaimAttest)
		if !errors.Is(err, tc.err) || (err == nil && (found != tc.found || string(raw) != tc.raw)) {
			t.Errorf("%s: got %q %v %v, want %q %v %v", tc.payload, raw, found, err, tc.raw, tc.found, tc.err)
		}
	}
}

func TestConfigValidateAttest(t *testing.T) {
	base := Config{Issuer: testIssuer, Audience: testAudience}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"off", func(c *Config) {}, true},
		{"required", func(c *Config) { c.Attest = AttestRequired }, true},
		{"optional", func(c *Config) { c.Attest = AttestOptional }, true},
		{"unknown mode", func(c *Config) { c.Attest = "always" }, false},
		{"negative age", func(c *Config) { c.Attest = AttestRequired; c.AttestMaxAge = -time.Minute }, false},
		{"purposes", func(c *Config) { c.Attest = AttestRequired; c.Purposes = []string{"ETREAT", "BTG", "1"} }, true},
		{"purpose twice", func(c *Config) { c.Attest = AttestRequired; c.Purposes = []string{"BTG", "BTG"} }, false},
		{"purpose with a space", func(c *Config) { c.Attest = AttestRequired; c.Purposes = []string{"B TG"} }, false},
		{"empty purpose", func(c *Config) { c.Attest = AttestRequired; c.Purposes = []string{""} }, false},
	} {
		c := base
		tc.mod(&c)
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate = %v", tc.name, err)
		}
	}
	c := base.withDefaults()
	if c.AttestMaxAge != 60*time.Minute || strings.Join(c.Purposes, " ") != "TREAT ETREAT COC BTG" {
		t.Errorf("defaults: %v %v", c.AttestMaxAge, c.Purposes)
	}
}

// FuzzParseAttest feeds arbitrary claim values to the attest reader: none
// may panic; whatever it accepts has values fit for a header, and reads the
// same in the string encoding.
func FuzzParseAttest(f *testing.F) {
	good := asString(f, goodAttest())
	for _, s := range []string{
		good, mustJSON(f, good), `{"attestation":` + good + `,"toa":1700000000}`, `{}`, `"{}"`, `[]`, `null`,
		`{"practitioner":{"identifier":{"id":"a","id":"b"}}}`, `{"Practitioner":{}}`, `{"toa":1e400}`,
		`{"patients":[[[[[[[[[]]]]]]]]]}`, `"{\"x\":\"\\u0000\"}"`, `{"care_relationship":{"decision_ref":{"user_selected":true}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := parseAttest(raw)
		if err != nil {
			return
		}
		for _, v := range []string{d.LegalEntity, d.PointOfCare, d.Department, d.PurposeOfUse, d.HealthcareService, d.DecisionRef, d.practitionerID} {
			if len(v) > maxAttestValue || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("accepted a value unfit for a header: %q", v)
			}
		}
		if raw[0] == '"' || len(raw) > MaxAttestSize/2 || !utf8.Valid(raw) {
			return
		}
		s, _ := json.Marshal(string(raw))
		d2, err := parseAttest(s)
		if err != nil || d2 != d {
			t.Fatalf("the string encoding reads differently: %v\n %+v\n %+v", err, d2, d)
		}
	})
}

func mustJSON(t testing.TB, s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// membershipFunc is a Membership answering from a function.
type membershipFunc func(service, org string) Answer

func (m membershipFunc) Lookup(_ context.Context, service, org string) (Answer, error) {
	return m(service, org), nil
}

// BenchmarkParseAttest reads a full attest in the string encoding: once per
// access token (the outcome is cached with the verified token).
func BenchmarkParseAttest(b *testing.B) {
	raw := []byte(mustJSON(b, asString(b, wrapped(goodAttest(), testNow))))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseAttest(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// IsAttestReason knows the attest step's reasons and no others.
func TestIsAttestReason(t *testing.T) {
	attest := map[string]bool{}
	for _, r := range []string{"attest_missing", "attest_malformed", "attest_not_user", "attest_security_level", "attest_not_caller",
		"attest_identifier_system", "attest_org_invalid", "attest_org_mismatch", "attestation_has_expired", "attest_toa_future", "attest_purpose"} {
		attest[r] = true
	}
	n := 0
	for _, r := range DenialReasons() {
		if IsAttestReason(r.Code) != attest[r.Code] {
			t.Errorf("IsAttestReason(%q) = %v", r.Code, !attest[r.Code])
		}
		if attest[r.Code] {
			n++
		}
	}
	if n != len(attest) {
		t.Errorf("DenialReasons lists %d of the %d attest reasons", n, len(attest))
	}
}
