package helseidsim_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// attestOf returns the attest of a token as an object, whichever the
// encoding, and whether the claim was a string.
func attestOf(t *testing.T, claims map[string]any) (map[string]any, bool) {
	t.Helper()
	switch v := claims[helseidsim.ClaimAttest].(type) {
	case map[string]any:
		return v, false
	case string:
		var doc map[string]any
		dec := json.NewDecoder(strings.NewReader(v))
		if err := dec.Decode(&doc); err != nil || dec.More() {
			t.Fatalf("the string attest is not one JSON object: %v: %q", err, v)
		}
		return doc, true
	case nil:
		t.Fatalf("no %s claim", helseidsim.ClaimAttest)
	default:
		t.Fatalf("the attest is a %T", v)
	}
	return nil, false
}

// path reads a member of a document by names.
func path(doc map[string]any, names ...string) any {
	var v any = doc
	for _, n := range names {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[n]
	}
	return v
}

func TestMintAttestForms(t *testing.T) {
	s := start(t, helseidsim.Options{})
	toa := time.Unix(1_790_000_000, 0)
	for _, tc := range []struct {
		name     string
		attest   helseidsim.Attest
		isString bool
		wrapped  bool
		toa      bool
	}{
		{"object", helseidsim.Attest{}, false, false, false},
		{"string", helseidsim.Attest{Encoding: helseidsim.AttestString}, true, false, false},
		{"object, wrapped, toa", helseidsim.Attest{Wrapped: true, TOA: toa}, false, true, true},
		{"string, wrapped, toa", helseidsim.Attest{Encoding: helseidsim.AttestString, Wrapped: true, TOA: toa}, true, true, true},
		{"string, toa, no wrapper", helseidsim.Attest{Encoding: helseidsim.AttestString, TOA: toa}, true, false, true},
		{"object, wrapped, no toa", helseidsim.Attest{Wrapped: true}, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.attest
			a.LegalEntity, a.PointOfCare, a.PurposeOfUse, a.DecisionRef, a.UserSelected = "917897468", "974600951", "ETREAT", "ref-1", true
			tok := mint(t, s, helseidsim.TokenSpec{PID: "17056600574", SecurityLevel: "4", Attest: &a})
			_, claims := decode(t, tok)
			doc, isString := attestOf(t, claims)
			if isString != tc.isString {
				t.Errorf("string encoding %v, want %v", isString, tc.isString)
			}
			params := doc
			if tc.wrapped {
				params, _ = doc["attestation"].(map[string]any)
				if params == nil || doc["practitioner"] != nil {
					t.Fatalf("want the parameters inside attestation: %v", doc)
				}
			} else if doc["attestation"] != nil {
				t.Fatalf("unexpected wrapper: %v", doc)
			}
			if got, ok := doc["toa"].(float64); tc.toa != ok || (ok && int64(got) != toa.Unix()) {
				t.Errorf("toa %v, want present %v (%d)", doc["toa"], tc.toa, toa.Unix())
			}
			for want, names := range map[any][]string{
				"17056600574":            {"practitioner", "identifier", "id"},
				helseidsim.SystemFNumber: {"practitioner", "identifier", "system"},
				"917897468":              {"practitioner", "legal_entity", "id"},
				"974600951":              {"practitioner", "point_of_care", "id"},
				"ETREAT":                 {"care_relationship", "purpose_of_use", "code"},
				"ref-1":                  {"care_relationship", "decision_ref", "id"},
				true:                     {"care_relationship", "decision_ref", "user_selected"},
			} {
				if got := path(params, names...); got != want {
					t.Errorf("%s = %#v, want %#v", strings.Join(names, "."), got, want)
				}
			}
		})
	}
	t.Run("raw", func(t *testing.T) {
		_, claims := decode(t, mint(t, s, helseidsim.TokenSpec{Attest: &helseidsim.Attest{Raw: `["not","an","object"]`}}))
		if claims[helseidsim.ClaimAttest] != `["not","an","object"]` {
			t.Errorf("raw attest %#v", claims[helseidsim.ClaimAttest])
		}
	})
	t.Run("bad encoding", func(t *testing.T) {
		if _, err := s.Mint(helseidsim.TokenSpec{Attest: &helseidsim.Attest{Encoding: "xml"}}); err == nil {
			t.Error("no error")
		}
	})
	t.Run("no attest unless asked", func(t *testing.T) {
		if _, claims := decode(t, mint(t, s, helseidsim.TokenSpec{PID: "17056600574"})); claims[helseidsim.ClaimAttest] != nil {
			t.Errorf("attest %v", claims[helseidsim.ClaimAttest])
		}
	})
}

func TestTokenEndpointAttest(t *testing.T) {
	s := start(t, helseidsim.Options{})
	key := newKey(t, "ES256")
	fetch := func(t *testing.T, form url.Values) (map[string]any, error) {
		t.Helper()
		form.Set("user", "true")
		tok, err := key.FetchToken(context.Background(), s.TokenEndpoint(), form)
		if err != nil {
			return nil, err
		}
		_, claims := decode(t, tok)
		return claims, nil
	}
	// toaNear checks that toa is age before now, to the second.
	toaNear := func(t *testing.T, doc map[string]any, age time.Duration) {
		t.Helper()
		got, ok := doc["toa"].(float64)
		want := time.Now().Add(-age).Unix()
		if !ok || int64(got) < want-2 || int64(got) > want+1 {
			t.Errorf("toa %v, want about %d", doc["toa"], want)
		}
	}
	t.Run("defaults", func(t *testing.T) {
		claims, err := fetch(t, url.Values{"attest": {"object"}, "orgnr_parent": {"917897468"}})
		if err != nil {
			t.Fatal(err)
		}
		doc, isString := attestOf(t, claims)
		if isString || doc["attestation"] != nil {
			t.Errorf("want an unwrapped object: %v", doc)
		}
		toaNear(t, doc, 0)
		for want, names := range map[any][]string{
			helseidsim.DefaultPID:          {"practitioner", "identifier", "id"},
			"917897468":                    {"practitioner", "legal_entity", "id"},
			helseidsim.DefaultPointOfCare:  {"practitioner", "point_of_care", "id"},
			helseidsim.DefaultPurposeOfUse: {"care_relationship", "purpose_of_use", "code"},
			helseidsim.DefaultDecisionRef:  {"care_relationship", "decision_ref", "id"},
			false:                          {"care_relationship", "decision_ref", "user_selected"},
		} {
			if got := path(doc, names...); got != want {
				t.Errorf("%s = %#v, want %#v", strings.Join(names, "."), got, want)
			}
		}
	})
	t.Run("string, wrapped, stale, another person's", func(t *testing.T) {
		claims, err := fetch(t, url.Values{"attest": {"string"}, "attest_wrapped": {"true"}, "attest_age": {"2h"},
			"attest_pid": {"02056600221"}, "purpose_of_use": {"BTG"}, "legal_entity": {"994598759"}, "point_of_care": {"922734046"},
			"department": {"705592"}, "healthcare_service": {"KP02"}, "decision_ref": {"d-42"}, "decision_user_selected": {"true"}})
		if err != nil {
			t.Fatal(err)
		}
		doc, isString := attestOf(t, claims)
		params, _ := doc["attestation"].(map[string]any)
		if !isString || params == nil {
			t.Fatalf("want a wrapped string: %v", doc)
		}
		toaNear(t, doc, 2*time.Hour)
		for want, names := range map[any][]string{
			"02056600221": {"practitioner", "identifier", "id"},
			"994598759":   {"practitioner", "legal_entity", "id"},
			"922734046":   {"practitioner", "point_of_care", "id"},
			"705592":      {"practitioner", "department", "id"},
			"BTG":         {"care_relationship", "purpose_of_use", "code"},
			"KP02":        {"care_relationship", "healthcare_service", "code"},
			"d-42":        {"care_relationship", "decision_ref", "id"},
			true:          {"care_relationship", "decision_ref", "user_selected"},
		} {
			if got := path(params, names...); got != want {
				t.Errorf("%s = %#v, want %#v", strings.Join(names, "."), got, want)
			}
		}
		if claims[helseidsim.ClaimPID] != helseidsim.DefaultPID {
			t.Errorf("pid %v: attest_pid must not change the token's pid", claims[helseidsim.ClaimPID])
		}
	})
	t.Run("no toa, the org only in the attest", func(t *testing.T) {
		claims, err := fetch(t, url.Values{"attest": {"object"}, "attest_toa": {"omit"}, "legal_entity": {"917897468"}})
		if err != nil {
			t.Fatal(err)
		}
		doc, _ := attestOf(t, claims)
		if _, ok := doc["toa"]; ok {
			t.Errorf("toa %v, want none", doc["toa"])
		}
		if claims[helseidsim.ClaimOrgParent] != nil || path(doc, "practitioner", "legal_entity", "id") != "917897468" {
			t.Errorf("orgnr_parent %v, legal_entity %v", claims[helseidsim.ClaimOrgParent], path(doc, "practitioner", "legal_entity", "id"))
		}
	})
	t.Run("no attest unless asked", func(t *testing.T) {
		claims, err := fetch(t, url.Values{"purpose_of_use": {"TREAT"}})
		if err != nil {
			t.Fatal(err)
		}
		if claims[helseidsim.ClaimAttest] != nil {
			t.Errorf("attest %v", claims[helseidsim.ClaimAttest])
		}
	})
	for name, form := range map[string]url.Values{
		"bad encoding":      {"attest": {"xml"}},
		"bad age":           {"attest": {"object"}, "attest_age": {"soon"}},
		"negative age":      {"attest": {"object"}, "attest_age": {"-1h"}},
		"age without toa":   {"attest": {"object"}, "attest_age": {"1h"}, "attest_toa": {"omit"}},
		"bad toa":           {"attest": {"object"}, "attest_toa": {"yesterday"}},
		"bad user_selected": {"attest": {"object"}, "decision_user_selected": {"perhaps"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := fetch(t, form); err == nil || !strings.Contains(err.Error(), "invalid_request") {
				t.Errorf("want invalid_request, got %v", err)
			}
		})
	}
}
