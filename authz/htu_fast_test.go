package authz

import (
	"errors"
	"strings"
	"testing"
)

func TestExpectedHTU(t *testing.T) {
	cases := []struct {
		scheme, host, path string
		fast               bool // kept as pieces, no normalization needed
		want               string
	}{
		{"https", "api.example.no", "/kjernejournal/v1/patient", true, "https://api.example.no/kjernejournal/v1/patient"},
		{"http", "127.0.0.1:8080", "/a/b.json", true, "http://127.0.0.1:8080/a/b.json"},
		{"https", "api.example.no", "/a;v=1/b:c@d$e&f+g,h=i~j_k-l.m", true, "https://api.example.no/a;v=1/b:c@d$e&f+g,h=i~j_k-l.m"},
		{"https", "api.example.no", "/", true, "https://api.example.no/"},
		{"https", "api.example.no", "/.well-known/x..y/...", true, "https://api.example.no/.well-known/x..y/..."},
		{"https", "api.example.no:443", "/a", false, "https://api.example.no/a"},
		{"http", "api.example.no:80", "/a", false, "http://api.example.no/a"},
		{"https", "API.example.no", "/a", false, "https://api.example.no/a"},
		{"https", "[::1]:8443", "/a", false, "https://[::1]:8443/a"},
		{"https", "api.example.no", "/a/./b/../c", false, "https://api.example.no/a/c"},
		{"https", "api.example.no", "/a/..", false, "https://api.example.no/"},
		{"https", "api.example.no", "/a/.", false, "https://api.example.no/a/"},
		{"https", "api.example.no", "/%7euser", false, "https://api.example.no/~user"},
		{"https", "api.example.no", "/a%2fb", false, "https://api.example.no/a%2Fb"},
		{"https", "api.example.no", "/a!b", false, "https://api.example.no/a!b"},
	}
	for _, tc := range cases {
		t.Run(tc.scheme+"://"+tc.host+tc.path, func(t *testing.T) {
			e, err := newExpectedHTU(tc.scheme, tc.host, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if fast := e.scheme != ""; fast != tc.fast {
				t.Errorf("fast path %v, want %v", fast, tc.fast)
			}
			if e.String() != tc.want {
				t.Errorf("got %s, want %s", e, tc.want)
			}
			if !e.matches([]byte(tc.want)) || !e.matches([]byte(strings.ToUpper(tc.scheme)+tc.want[len(tc.scheme):]+"?q#f")) {
				t.Error("the normalized URI does not match")
			}
			if e.matches([]byte(tc.want+"x")) || e.matches([]byte(tc.want+"/y")) || e.matches([]byte("https://other.example/")) {
				t.Error("another URI matches")
			}
			// The same length, one byte changed: in the path, in the host.
			for _, i := range []int{len(tc.want) - 1, len(tc.scheme) + len("://")} {
				other := []byte(tc.want)
				other[i] = 'q'
				if other[i] == tc.want[i] {
					other[i] = 'z'
				}
				if e.matches(other) {
					t.Errorf("%s matches", other)
				}
			}
		})
	}
	for _, bad := range []struct{ scheme, host, path string }{
		{"https", "", "/a"}, {"https", "h", "/a%zz"}, {"ftp", "h", "/a"},
		// A host with a URI delimiter would choose the expected htu itself.
		{"https", "api.example.no/kjernejournal#", "/admin/delete"},
		{"https", "api.example.no?", "/a"}, {"https", "u@api.example.no", "/a"},
		{"https", "api.example.no%2F", "/a"}, {"https", "api.example.no /x", "/a"},
	} {
		if e, err := newExpectedHTU(bad.scheme, bad.host, bad.path); err == nil {
			t.Errorf("%v: want an error, got %s", bad, e)
		}
	}
}

func TestExpectedHTUMatchesNoAllocs(t *testing.T) {
	e, err := newExpectedHTU("https", testHost, testPath)
	if err != nil {
		t.Fatal(err)
	}
	htu := []byte("https://" + testHost + testPath)
	if n := testing.AllocsPerRun(100, func() {
		if !e.matches(htu) {
			t.Fatal("no match")
		}
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// FuzzExpectedHTU checks the shortcut against the definition: the expected
// htu is NormalizeHTU of the request's URI, and a proof's htu matches when
// NormalizeHTU of it equals that.
func FuzzExpectedHTU(f *testing.F) {
	f.Add("https", "api.example.no", "/a/b", "https://api.example.no/a/b")
	f.Add("http", "x:80", "/a/./b", "HTTP://X/a/b?c")
	f.Add("https", "h:443", "/%7e", "https://h/~")
	f.Add("https", "a-b.c", "/x/..", "https://a-b.c/")
	f.Add("https", "api.example.no/kj#", "/admin", "https://api.example.no/kj")
	f.Add("https", "[fe80::1%25en0]", "/a", "https://[fe80::1%25en0]/a")
	f.Fuzz(func(t *testing.T, scheme, host, path, htu string) {
		want, wantErr := NormalizeHTU(scheme + "://" + host + path)
		if !isAuthority(host) {
			// Not host[:port]: refused, whatever NormalizeHTU makes of it.
			wantErr = errors.New("not an authority")
		}
		e, err := newExpectedHTU(scheme, host, path)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("error %v, NormalizeHTU's %v", err, wantErr)
		}
		if err != nil {
			return
		}
		if e.String() != want {
			t.Fatalf("expected htu %q, NormalizeHTU %q", e, want)
		}
		n, nerr := NormalizeHTU(htu)
		if got, def := e.matches([]byte(htu)), nerr == nil && n == want; got != def {
			t.Fatalf("matches(%q) = %v, by definition %v (expected %q)", htu, got, def, want)
		}
	})
}

func TestReplayKey(t *testing.T) {
	// The definition: base64url(SHA-256(jkt || 0x00 || jti)), for a short
	// jti (stack buffer) and a long one.
	for _, jti := range []string{"", "KzOsqYbL7QmZd0l3T1-3Ww", strings.Repeat("j", 300)} {
		jkt := "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
		var b []byte
		b = append(append(append(b, jkt...), 0), jti...)
		if got, want := replayKey(jkt, []byte(jti)), ath(string(b)); got != want {
			t.Errorf("len(jti) %d: %s, want %s", len(jti), got, want)
		}
	}
	if replayKey("a", []byte("b")) == replayKey("ab", nil) {
		t.Error("the separator does not separate")
	}
}

// BenchmarkExpectedHTU is the expected htu of a typical request, already in
// normal form, and a proof's htu compared with it.
func BenchmarkExpectedHTU(b *testing.B) {
	htu := []byte("https://kjernejournal.bench.invalid/fhir/R4/Patient/example")
	b.ReportAllocs()
	for b.Loop() {
		e, err := newExpectedHTU("https", "kjernejournal.bench.invalid", "/fhir/R4/Patient/example")
		if err != nil || !e.matches(htu) {
			b.Fatal("no match")
		}
	}
}
