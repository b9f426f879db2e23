package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// refProofClaims is how proof claims were decoded before parseProofClaims:
// encoding/json into pointers. It is the reference parseProofClaims is
// checked against.
type refProofClaims struct {
	JTI   *string      `json:"jti"`
	HTM   *string      `json:"htm"`
	HTU   *string      `json:"htu"`
	IAT   *numericDate `json:"iat"`
	ATH   *string      `json:"ath"`
	Nonce *string      `json:"nonce"`
}

func TestParseProofClaims(t *testing.T) {
	good := `{"jti":"j-1","htm":"GET","htu":"https://a.example/p","iat":1764000000,"ath":"x","nonce":"n"}`
	ok := []struct {
		name, in string
		check    func(t *testing.T, c proofClaims)
	}{
		{"all claims", good, func(t *testing.T, c proofClaims) {
			if string(c.JTI.V) != "j-1" || string(c.HTM.V) != "GET" || string(c.HTU.V) != "https://a.example/p" ||
				string(c.ATH.V) != "x" || string(c.Nonce.V) != "n" || !c.HasIAT || !c.IAT.Equal(time.Unix(1764000000, 0)) {
				t.Fatalf("%+v", c)
			}
		}},
		{"whitespace everywhere", " \t\r\n{ \"jti\" :\n\"j\" , \"iat\"\t: 5 }\n", func(t *testing.T, c proofClaims) {
			if string(c.JTI.V) != "j" || !c.IAT.Equal(time.Unix(5, 0)) {
				t.Fatalf("%+v", c)
			}
		}},
		{"empty object", `{}`, func(t *testing.T, c proofClaims) {
			if c.JTI.Present || c.HTM.Present || c.HTU.Present || c.ATH.Present || c.Nonce.Present || c.HasIAT {
				t.Fatalf("%+v", c)
			}
		}},
		{"empty string is present", `{"jti":""}`, func(t *testing.T, c proofClaims) {
			if !c.JTI.Present || len(c.JTI.V) != 0 {
				t.Fatalf("%+v", c)
			}
		}},
		{"null is absent", `{"jti":null,"iat":null}`, func(t *testing.T, c proofClaims) {
			if c.JTI.Present || c.HasIAT {
				t.Fatalf("%+v", c)
			}
		}},
		{"escapes decoded", `{"htu":"https:\/\/a.example\/\u0070","jti":"\"\\\n\u00e6\ud83d\ude00"}`, func(t *testing.T, c proofClaims) {
			if string(c.HTU.V) != "https://a.example/p" || string(c.JTI.V) != "\"\\\næ😀" {
				t.Fatalf("%q %q", c.HTU.V, c.JTI.V)
			}
		}},
		{"escaped member name", `{"\u006a\u0074\u0069":"j"}`, func(t *testing.T, c proofClaims) {
			if string(c.JTI.V) != "j" {
				t.Fatalf("%+v", c)
			}
		}},
		{"fractional iat", `{"iat":1.5}`, func(t *testing.T, c proofClaims) {
			if !c.IAT.Equal(time.Unix(1, 5e8)) {
				t.Fatal(c.IAT)
			}
		}},
		{"exponent iat", `{"iat":1.7e9}`, func(t *testing.T, c proofClaims) {
			if !c.IAT.Equal(time.Unix(1.7e9, 0)) {
				t.Fatal(c.IAT)
			}
		}},
		{"other members of any type skipped", `{"a":[1,{"b":[true,false,null,"x"]}],"c":{},"d":[],"e":-0.5e-3,"jti":"j"}`, func(t *testing.T, c proofClaims) {
			if string(c.JTI.V) != "j" {
				t.Fatalf("%+v", c)
			}
		}},
		{"names are case-sensitive", `{"JTI":"j","Htm":"GET"}`, func(t *testing.T, c proofClaims) {
			if c.JTI.Present || c.HTM.Present {
				t.Fatalf("%+v", c)
			}
		}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseProofClaims([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}

	bad := []struct{ name, in string }{
		{"empty", ``},
		{"not an object", `["jti"]`},
		{"null", `null`},
		{"string", `"x"`},
		{"trailing data", good + `x`},
		{"two objects", good + `{}`},
		{"unterminated", `{"jti":"j"`},
		{"trailing comma", `{"jti":"j",}`},
		{"missing colon", `{"jti" "j"}`},
		{"single quotes", `{'jti':'j'}`},
		{"bare name", `{jti:"j"}`},
		{"jti a number", `{"jti":7}`},
		{"htm an object", `{"htm":{}}`},
		{"htu an array", `{"htu":["https://a.example/"]}`},
		{"ath true", `{"ath":true}`},
		{"iat a string", `{"iat":"1764000000"}`},
		{"iat negative", `{"iat":-1}`},
		{"iat too large", `{"iat":1e300}`},
		{"iat out of float range", `{"iat":1e400}`},
		{"iat leading zero", `{"iat":01}`},
		{"iat plus sign", `{"iat":+1}`},
		{"iat bare dot", `{"iat":1.}`},
		{"iat bad exponent", `{"iat":1e}`},
		{"duplicate jti", `{"jti":"a","jti":"b"}`},
		{"duplicate iat", `{"iat":1,"iat":2}`},
		{"duplicate after null", `{"jti":"a","jti":null}`},
		{"control character", "{\"jti\":\"a\x01\"}"},
		{"bad escape", `{"jti":"\x"}`},
		{"short unicode escape", `{"jti":"\u00"}`},
		{"invalid UTF-8", "{\"jti\":\"\xff\"}"},
		{"invalid UTF-8 beside an escape", "{\"jti\":\"\\u0061\xff\"}"},
		{"bad literal", `{"a":nul}`},
		{"bad nested", `{"a":[1,]}`},
		{"unclosed nested", `{"a":{"b":1}`},
		{"too deep", `{"a":` + strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1) + `}`},
	}
	for _, tc := range bad {
		t.Run("refused "+tc.name, func(t *testing.T) {
			if c, err := parseProofClaims([]byte(tc.in)); err == nil {
				t.Fatalf("want an error, got %+v", c)
			}
		})
	}
}

// TestParseProofClaimsNoAllocs: the common proof costs no allocation.
func TestParseProofClaimsNoAllocs(t *testing.T) {
	in := []byte(`{"jti":"KzOsqYbL7QmZd0l3T1-3Ww","htm":"GET","htu":"https://api.example.no/kjernejournal/v1/patient","iat":1764000000,"ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"}`)
	if n := testing.AllocsPerRun(100, func() { _, _ = parseProofClaims(in) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// FuzzProofClaims checks parseProofClaims against encoding/json: whatever it
// accepts, encoding/json accepts with the same claims; whatever encoding/json
// accepts with every required claim, it accepts too, except where it is
// deliberately stricter (duplicate claims, claim names in another case,
// invalid UTF-8).
func FuzzProofClaims(f *testing.F) {
	for _, s := range []string{
		`{"jti":"j-1","htm":"GET","htu":"https://a.example/p","iat":1764000000,"ath":"x","nonce":"n"}`,
		`{"jti":"\u006a","htm":"GET","htu":"h","iat":1.5e3,"ath":"a","x":[{"y":null}]}`,
		`{"jti":null}`, `{}`, `[]`, `null`, `{"iat":-0}`, `{"JTI":"a","jti":"b"}`, `{"a":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseProofClaims(b)
		var ref refProofClaims
		refErr := json.Unmarshal(b, &ref)
		if err == nil {
			if foldedOrDuplicate(b) {
				return // encoding/json may have read (and refused) another member
			}
			if refErr != nil {
				t.Fatalf("accepted what encoding/json refuses (%v): %q", refErr, b)
			}
			for _, p := range []struct {
				name string
				got  claimString
				ref  *string
			}{{"jti", got.JTI, ref.JTI}, {"htm", got.HTM, ref.HTM}, {"htu", got.HTU, ref.HTU}, {"ath", got.ATH, ref.ATH}, {"nonce", got.Nonce, ref.Nonce}} {
				if p.got.Present != (p.ref != nil) || (p.ref != nil && string(p.got.V) != *p.ref) {
					t.Fatalf("%s: got %v %q, encoding/json %v: %q", p.name, p.got.Present, p.got.V, p.ref, b)
				}
			}
			if got.HasIAT != (ref.IAT != nil) || (ref.IAT != nil && !got.IAT.Equal(ref.IAT.Time)) {
				t.Fatalf("iat: got %v %v, encoding/json %v: %q", got.HasIAT, got.IAT, ref.IAT, b)
			}
			return
		}
		complete := refErr == nil && ref.JTI != nil && *ref.JTI != "" && ref.HTM != nil && ref.HTU != nil && ref.IAT != nil && ref.ATH != nil
		if complete && utf8.Valid(b) && !foldedOrDuplicate(b) && !errors.Is(err, errClaimsDepth) {
			t.Fatalf("refused (%v) a proof encoding/json reads in full: %q", err, b)
		}
	})
}

// foldedOrDuplicate reports whether a JSON object has a member whose name
// is a claim's in another case (encoding/json matches names case-
// insensitively), or a claim twice.
func foldedOrDuplicate(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		name, _ := tok.(string)
		for _, claim := range []string{"jti", "htm", "htu", "iat", "ath", "nonce"} {
			if strings.EqualFold(name, claim) || foldsTo(name, claim) {
				if name != claim || seen[claim] {
					return true
				}
				seen[claim] = true
			}
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return false
		}
	}
	return false
}

// foldsTo reports whether encoding/json could match name to claim: the same
// length in runes and every rune folding to the claim's (it folds the Kelvin
// sign to k and the long s to s as well).
func foldsTo(name, claim string) bool {
	r := []rune(name)
	if len(r) != len(claim) {
		return false
	}
	for i, c := range r {
		switch {
		case c == 'K' && claim[i] == 'k', c == 'ſ' && claim[i] == 's':
		case !strings.EqualFold(string(c), claim[i:i+1]):
			return false
		}
	}
	return true
}

// BenchmarkParseProofClaims reads the claims of a typical proof: a UUID jti,
// the method, a FHIR URL, iat and a 43-character ath.
func BenchmarkParseProofClaims(b *testing.B) {
	in := []byte(`{"jti":"4f9a1c2e-7b3d-4e8a-9c6f-1a2b3c4d5e6f","htm":"GET","htu":"https://kjernejournal.bench.invalid/fhir/R4/Patient/example","iat":1764000000,"ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseProofClaims(in); err != nil {
			b.Fatal(err)
		}
	}
}
