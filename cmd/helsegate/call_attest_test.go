package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// tokenCatcher is a gateway that answers 200 and keeps the claims of the
// last access token it was sent.
func tokenCatcher(t *testing.T) (string, func() map[string]any) {
	t.Helper()
	var mu sync.Mutex
	var last string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		_, last, _ = strings.Cut(r.Header.Get("Authorization"), " ")
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/pjd/api/documents", func() map[string]any {
		mu.Lock()
		defer mu.Unlock()
		parts := strings.Split(last, ".")
		if len(parts) != 3 {
			t.Fatalf("no token reached the gateway: %q", last)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var claims map[string]any
		if err := json.Unmarshal(payload, &claims); err != nil {
			t.Fatal(err)
		}
		return claims
	}
}

// attestDoc returns a token's attest as an object and whether it was a
// string, with the parameters (inside the wrapper when there is one).
func attestDoc(t *testing.T, claims map[string]any) (doc, params map[string]any, isString bool) {
	t.Helper()
	switch v := claims[helseidsim.ClaimAttest].(type) {
	case map[string]any:
		doc = v
	case string:
		isString = true
		if err := json.Unmarshal([]byte(v), &doc); err != nil {
			t.Fatalf("string attest: %v", err)
		}
	default:
		return nil, nil, false
	}
	params = doc
	if w, ok := doc["attestation"].(map[string]any); ok {
		params = w
	}
	return doc, params, isString
}

func member(doc map[string]any, names ...string) any {
	var v any = doc
	for _, n := range names {
		m, _ := v.(map[string]any)
		v = m[n]
	}
	return v
}

func TestCallAttestFlags(t *testing.T) {
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	target, claimsOf := tokenCatcher(t)

	for _, tc := range []struct {
		name  string
		flags map[string]string
		check func(t *testing.T, claims, doc, params map[string]any, isString bool)
	}{
		{"no attest flag: no attest", map[string]string{"user": "true"}, func(t *testing.T, claims, doc, _ map[string]any, _ bool) {
			if doc != nil {
				t.Errorf("attest %v", doc)
			}
		}},
		{"purpose alone: an object attest on a user token, toa now", map[string]string{"purpose": "ETREAT"}, func(t *testing.T, claims, doc, params map[string]any, isString bool) {
			if isString || doc["attestation"] != nil || claims[helseidsim.ClaimPID] == nil {
				t.Errorf("want an unwrapped object on a user token: %v", claims)
			}
			if member(params, "care_relationship", "purpose_of_use", "code") != "ETREAT" ||
				member(params, "practitioner", "legal_entity", "id") != "917897468" {
				t.Errorf("attest %v", params)
			}
			if toa, _ := doc["toa"].(float64); time.Since(time.Unix(int64(toa), 0)) > time.Minute {
				t.Errorf("toa %v, want now", doc["toa"])
			}
		}},
		{"every flag", map[string]string{"attest": "string", "attest-wrapped": "true", "legal-entity": "994598759", "point-of-care": "922734046",
			"decision-ref": "d-7", "attest-age": "2h", "attest-pid": "02056600221"}, func(t *testing.T, claims, doc, params map[string]any, isString bool) {
			if !isString || doc["attestation"] == nil {
				t.Errorf("want a wrapped string: %v", claims[helseidsim.ClaimAttest])
			}
			for want, names := range map[string][]string{
				"994598759":   {"practitioner", "legal_entity", "id"},
				"922734046":   {"practitioner", "point_of_care", "id"},
				"d-7":         {"care_relationship", "decision_ref", "id"},
				"02056600221": {"practitioner", "identifier", "id"},
			} {
				if got := member(params, names...); got != want {
					t.Errorf("%s = %v, want %s", strings.Join(names, "."), got, want)
				}
			}
			toa, _ := doc["toa"].(float64)
			if age := time.Since(time.Unix(int64(toa), 0)); age < 2*time.Hour-time.Minute || age > 2*time.Hour+time.Minute {
				t.Errorf("toa %v is %s old, want 2h", doc["toa"], age)
			}
		}},
		{"no toa, the org only in the attest", map[string]string{"org": "", "legal-entity": "917897468", "no-toa": "true"}, func(t *testing.T, claims, doc, params map[string]any, _ bool) {
			if _, ok := doc["toa"]; ok || claims[helseidsim.ClaimOrgParent] != nil {
				t.Errorf("toa %v, orgnr_parent %v; want neither", doc["toa"], claims[helseidsim.ClaimOrgParent])
			}
			if member(params, "practitioner", "legal_entity", "id") != "917897468" {
				t.Errorf("legal_entity %v", member(params, "practitioner", "legal_entity"))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags := map[string]string{"issuer": sim.Issuer(), "quiet": "true"}
			for k, v := range tc.flags {
				flags[k] = v
			}
			var out bytes.Buffer
			code, err := runCall(newCallCmd(t, &out, flags), []string{target})
			if err != nil || code != 0 {
				t.Fatalf("code %d, err %v\n%s", code, err, out.String())
			}
			claims := claimsOf()
			doc, params, isString := attestDoc(t, claims)
			tc.check(t, claims, doc, params, isString)
		})
	}

	for name, flags := range map[string]map[string]string{
		"bad encoding":           {"attest": "xml"},
		"negative age":           {"attest-age": "-1h"},
		"no-toa and age":         {"no-toa": "true", "attest-age": "1h"},
		"attest flag with token": {"purpose": "TREAT", "token": "a.b.c", "key": newKeyFile(t)},
	} {
		t.Run(name, func(t *testing.T) {
			flags["issuer"] = sim.Issuer()
			if code, err := runCall(newCallCmd(t, &bytes.Buffer{}, flags), []string{target}); err == nil || code == 0 {
				t.Errorf("code %d, err %v; want an error", code, err)
			}
		})
	}
}
