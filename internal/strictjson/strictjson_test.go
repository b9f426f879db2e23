package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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

// checkReference is Check written the plain way, with encoding/json's
// tokenizer: the fast scanner must agree with it on every document.
func checkReference(data []byte, t reflect.Type) error {
	if !json.Valid(data) || !utf8.Valid(data) {
		return errors.New("not valid JSON in UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := refValue(dec, t); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the top-level value")
	}
	return nil
}

func refValue(dec *json.Decoder, t reflect.Type) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	t = deref(t)
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && !customDecoder(t) && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := refValue(dec, elem); err != nil {
				return err
			}
		}
	case '{':
		fields := fieldsOf(t)
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name := tok.(string)
			if seen[name] {
				return fmt.Errorf("member %q appears twice", name)
			}
			seen[name] = true
			ft, exact := fields[name]
			if !exact {
				for known := range fields {
					if strings.EqualFold(known, name) {
						return fmt.Errorf("member %q is not %q", name, known)
					}
				}
			}
			if err := refValue(dec, ft); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token()
	return err
}

// FuzzCheckAgainstReference holds the scanner to the plain version.
func FuzzCheckAgainstReference(f *testing.F) {
	for _, s := range []string{
		`{"iss":"x","aud":["a",{"b":[1,2.5e3,true,null]}],"cnf":{"jkt":"k"}}`, `{"iss":"a","iss":"b"}`, `{"ISS":"x"}`,
		`{"cnf":{"JKT":"k"}}`, `{"a\"b":1,"a\u0022b":2}`, `{"\u0069ss":"x"}`, `[{"a":1,"a":2}]`, ` { "x" : { } , "y" : [ ] } `,
		`"s"`, `12`, `{"extra":{}}`, `{"Extra":{"k":1,"K":2}}`, `{"a":"\\","b":"\\\""}`,
	} {
		f.Add(s)
	}
	many := "{"
	for i := range 40 {
		many += fmt.Sprintf(`"k%d":%d,`, i, i)
	}
	f.Add(many + `"k3":0}`)
	f.Add(many + `"k99":0}`)
	f.Fuzz(func(t *testing.T, doc string) {
		got, want := Check([]byte(doc), reflect.TypeOf(claims{})), checkReference([]byte(doc), reflect.TypeOf(claims{}))
		if (got == nil) != (want == nil) {
			t.Errorf("%q: Check says %v, the reference %v", doc, got, want)
		}
	})
}

// A token-sized document without escapes costs no allocation.
func TestCheckAllocs(t *testing.T) {
	doc := []byte(`{"iss":"https://helseid-sts.nhn.no","aud":["nhn:kjernejournal"],"exp":1999999999,"nbf":1,"client_id":"c",` +
		`"scope":["a","b"],"jti":"j","cnf":{"jkt":"k"},"helseid://claims/client/claims/orgnr_parent":"917897468","amr":["pwd"]}`)
	typ := reflect.TypeOf(claims{})
	if err := Check(doc, typ); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Check(doc, typ) }); n != 0 {
		t.Errorf("Check allocates %v times", n)
	}
}
