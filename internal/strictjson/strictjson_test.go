package strictjson

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

type confirm struct {
	JKT *string `json:"jkt"`
}

type claims struct {
	Iss   string   `json:"iss"`
	Aud   []string `json:"aud"`
	Cnf   *confirm `json:"cnf"`
	Org   string   `json:"helseid://claims/client/claims/orgnr_parent"`
	Extra map[string]any
	Skip  string `json:"-"`
}

type record struct {
	Organization string     `json:"organization"`
	Member       bool       `json:"member"`
	ValidTo      *time.Time `json:"valid_to"`
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		typ  any
		ok   bool
	}{
		{"plain claims", `{"iss":"x","aud":["a"],"cnf":{"jkt":"k"},"helseid://claims/client/claims/orgnr_parent":"1"}`, claims{}, true},
		{"unknown members", `{"iss":"x","other":{"a":1},"ISSUER":2}`, claims{}, true},
		{"null and nesting", `{"cnf":null,"aud":[],"x":[{"a":1},{"a":2}]}`, claims{}, true},
		{"upper-case iss", `{"ISS":"x"}`, claims{}, false},
		{"mixed-case cnf", `{"Cnf":{"jkt":"k"}}`, claims{}, false},
		{"upper-case jkt in cnf", `{"cnf":{"JKT":"k"}}`, claims{}, false},
		{"upper-case HelseID claim", `{"HELSEID://CLAIMS/CLIENT/CLAIMS/ORGNR_PARENT":"1"}`, claims{}, false},
		{"Kelvin sign folds to k", "{\"cnf\":{\"j\u212At\":\"k\"}}", claims{}, false},
		{"duplicate iss", `{"iss":"a","iss":"b"}`, claims{}, false},
		{"duplicate in cnf", `{"cnf":{"jkt":"a","jkt":"b"}}`, claims{}, false},
		{"duplicate in an unknown member", `{"x":{"a":1,"a":2}}`, claims{}, false},
		{"duplicate in an array", `{"x":[{"a":1,"a":2}]}`, claims{}, false},
		{"escaped duplicate", `{"iss":"a","\u0069ss":"b"}`, claims{}, false},
		{"member and MEMBER", `{"organization":"1","member":false,"MEMBER":true}`, record{}, false},
		{"Member alone", `{"organization":"1","Member":true}`, record{}, false},
		{"duplicate member", `{"member":false,"member":true}`, record{}, false},
		{"record", `{"organization":"1","member":true,"valid_to":"2030-01-01T00:00:00Z"}`, record{}, true},
		{"invalid UTF-8", "{\"iss\":\"\xff\"}", claims{}, false},
		{"trailing data", `{"iss":"x"} {}`, claims{}, false},
		{"not JSON", `{"iss":`, claims{}, false},
		{"field without a tag", `{"extra":{}}`, claims{}, false},
		{"field without a tag, exact", `{"Extra":{}}`, claims{}, true},
		{"skipped field", `{"skip":"x"}`, claims{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check([]byte(tc.doc), reflect.TypeOf(tc.typ))
			if (err == nil) != tc.ok {
				t.Errorf("Check(%s) = %v, want ok %v", tc.doc, err, tc.ok)
			}
		})
	}
}

// FuzzCheck holds Check to its promise: a document it accepts is read by
// encoding/json into the struct exactly as a reader that matches names
// exactly would read it (here: into a map, member by member).
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		`{"iss":"x","aud":["a"],"cnf":{"jkt":"k"}}`,
		`{"iss":"a","iss":"b"}`, `{"ISS":"x"}`, `{"Iss":"x","iss":"y"}`, `{"cnf":{"JKT":"k"}}`,
		`{"cnf":{"jkt":"a","jkt":"b"}}`, "{\"cnf\":{\"j\u212At\":\"k\"}}", `{"iſs":"x"}`,
		`{"HELSEID://CLAIMS/CLIENT/CLAIMS/ORGNR_PARENT":"1"}`, `{"helseid://claims/client/claims/orgnr_parent":"1"}`,
		`{"iss":"a","\u0069ss":"b"}`, `[{"iss":1}]`, `{"x":{"a":1,"a":2}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		var c claims
		if Unmarshal([]byte(doc), &c) != nil {
			return
		}
		var m map[string]json.RawMessage
		if json.Unmarshal([]byte(doc), &m) != nil {
			return
		}
		var iss string
		if raw, ok := m["iss"]; ok {
			_ = json.Unmarshal(raw, &iss)
		}
		if c.Iss != iss {
			t.Errorf("%s: encoding/json read iss %q, an exact reader %q", doc, c.Iss, iss)
		}
		var jkt string
		if raw, ok := m["cnf"]; ok {
			var cm map[string]json.RawMessage
			if json.Unmarshal(raw, &cm) == nil {
				_ = json.Unmarshal(cm["jkt"], &jkt)
			}
		}
		if got := ""; c.Cnf != nil && c.Cnf.JKT != nil {
			got = *c.Cnf.JKT
			if got != jkt {
				t.Errorf("%s: encoding/json read jkt %q, an exact reader %q", doc, got, jkt)
			}
		}
	})
}
