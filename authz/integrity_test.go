package authz

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestAmbiguousPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"", false}, {"/", false}, {"/kj/api/patient", false}, {"/kj/api/patient/", false},
		{"/a.b/c..d/...", false}, {"/.well-known/x", false}, {"/a/%41", false}, {"/a%20b", false}, {"/a/%2e%2e%2e", false},
		{"/.", true}, {"/..", true}, {"/a/./b", true}, {"/a/../b", true}, {"/a/..", true},
		{"/a/%2e/b", true}, {"/a/%2E%2e/b", true}, {"/a/.%2e/b", true}, {"/a/%2e./b", true},
		{"//a", true}, {"/a//b", true}, {"/a/b//", true},
		{"/a%2fb", true}, {"/a%2Fb", true}, {"/a%5cb", true}, {"/a%5Cb", true}, {"/a\\b", true},
		{"..", true}, {"./a", true}, {"%2e%2e/a", true},
	} {
		if got := ambiguousPath(tc.path); got != tc.want {
			t.Errorf("ambiguousPath(%q) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

func TestHasAccessTokenParam(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want bool
	}{
		{"", false}, {"a=1", false}, {"access=token", false}, {"access_tokens=1", false}, {"x=access_token", false},
		{"access_token%00=1", false}, {"access-token=1", false}, {"acceſs_token=1", false},
		{"ACCESS_TOKEN=1", true}, {"Access_Token=1", true}, {"access.token=1", true}, {"access[token=1", true},
		{"access+token=1", true}, {"access%20token=1", true}, {"ACCESS%2ETOKEN=1", true},
		{"access_token=1", true}, {"access_token", true}, {"access_token=", true}, {"a=1&access_token=2", true},
		{"a=1;access_token=2", true}, {"access%5Ftoken=1", true}, {"access%5ftoken=1", true}, {"%61ccess_token=1", true},
		{"%61%63%63%65%73%73%5F%74%6F%6B%65%6E=1", true}, {"&&access_token", true},
	} {
		if got := HasAccessTokenParam(tc.raw); got != tc.want {
			t.Errorf("HasAccessTokenParam(%q) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}

// FuzzHasAccessTokenParam holds HasAccessTokenParam to Go's own query
// parser: whatever url.ParseQuery reads as access_token, it finds too.
func FuzzHasAccessTokenParam(f *testing.F) {
	for _, s := range []string{"access_token=1", "access%5Ftoken=1", "a=1;access_token=2", "%61ccess_token", "access+token=1", "access_token%zz=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, _ := url.ParseQuery(raw)
		if q.Has("access_token") && !HasAccessTokenParam(raw) {
			t.Errorf("url.ParseQuery finds access_token in %q, HasAccessTokenParam does not", raw)
		}
	})
}

func TestCheckFormBody(t *testing.T) {
	if b, derr := CheckFormBody(strings.NewReader("a=1&b=2")); derr != nil || string(b) != "a=1&b=2" {
		t.Errorf("a plain form: %q %v", b, derr)
	}
	if _, derr := CheckFormBody(strings.NewReader("a=1&access%5Ftoken=2")); derr == nil || derr.Reason != "token_in_body" {
		t.Errorf("a form with a token: %v", derr)
	}
	if _, derr := CheckFormBody(strings.NewReader(strings.Repeat("a", MaxFormBody+1))); derr == nil || derr.Reason != "form_body_too_large" {
		t.Errorf("a form over the limit: %v", derr)
	}
	if b, derr := CheckFormBody(strings.NewReader(strings.Repeat("a", MaxFormBody))); derr != nil || len(b) != MaxFormBody {
		t.Errorf("a form at the limit: %d %v", len(b), derr)
	}
}

func TestFormBody(t *testing.T) {
	for _, tc := range []struct {
		types    []string
		encoding string
		form     bool
		reason   string
	}{
		{nil, "", false, ""},
		{[]string{"application/json"}, "", false, ""},
		{[]string{"application/x-www-form-urlencoded"}, "", true, ""},
		{[]string{"Application/X-WWW-Form-Urlencoded; charset=utf-8"}, "", true, ""},
		{[]string{"application/x-www-form-urlencoded"}, "identity", true, ""},
		{[]string{"text/plain", "application/x-www-form-urlencoded"}, "", false, "content_type_ambiguous"},
		{[]string{"application/x-www-form-urlencoded, text/plain"}, "", false, "content_type_ambiguous"},
		{[]string{"application/x-www-form-urlencoded"}, "gzip", false, "form_body_unreadable"},
		{[]string{"text/plain", "application/json"}, "", false, ""},
	} {
		form, derr := FormBody(tc.types, tc.encoding)
		reason := ""
		if derr != nil {
			reason = derr.Reason
		}
		if form != tc.form || reason != tc.reason {
			t.Errorf("FormBody(%q, %q) = %v, %q; want %v, %q", tc.types, tc.encoding, form, reason, tc.form, tc.reason)
		}
	}
}

// refAmbiguousPath is ambiguousPath written the slow, plain way (every
// segment handed to isDotSegment), the reference FuzzAmbiguousPath holds the
// faster one to.
func refAmbiguousPath(p string) bool {
	if strings.Contains(p, "\\") || strings.Contains(p, "//") {
		return true
	}
	for i := 0; i+2 < len(p); i++ {
		if c := unhexPair(p[i+1], p[i+2]); p[i] == '%' && (c == '/' || c == '\\') {
			return true
		}
	}
	return slices.ContainsFunc(strings.Split(p, "/"), isDotSegment)
}

func FuzzAmbiguousPath(f *testing.F) {
	for _, s := range []string{"", "/", "/kj/api/patient", "/a/./b", "/a/%2E%2e/b", "..", "%2e%2e/a", "/a//b", "/a%5cb", "/.%2e", "./", "%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if got, want := ambiguousPath(p), refAmbiguousPath(p); got != want {
			t.Fatalf("ambiguousPath(%q) = %v, the reference says %v", p, got, want)
		}
	})
}

// BenchmarkCheckPath is the path check of a typical FHIR request.
func BenchmarkCheckPath(b *testing.B) {
	for b.Loop() {
		if checkPath("/kjernejournal/fhir/R4/Patient/example") != nil {
			b.Fatal("refused")
		}
	}
}
