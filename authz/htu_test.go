package authz

import "testing"

func TestNormalizeHTU(t *testing.T) {
	cases := []struct{ in, want string }{
		{"https://api.example.no/a/b", "https://api.example.no/a/b"},
		{"HTTPS://API.Example.NO/a", "https://api.example.no/a"},
		{"https://api.example.no:443/a", "https://api.example.no/a"},
		{"http://api.example.no:80/a", "http://api.example.no/a"},
		{"https://api.example.no:8443/a", "https://api.example.no:8443/a"},
		{"http://api.example.no:443/a", "http://api.example.no:443/a"},
		{"https://api.example.no", "https://api.example.no/"},
		{"https://api.example.no/a?x=1#frag", "https://api.example.no/a"},
		{"https://api.example.no/a/./b/../c", "https://api.example.no/a/c"},
		{"https://api.example.no/a/b/..", "https://api.example.no/a/"},
		{"https://api.example.no/../a", "https://api.example.no/a"},
		{"https://api.example.no/%7euser/%61", "https://api.example.no/~user/a"},
		{"https://api.example.no/a%2fb", "https://api.example.no/a%2Fb"},
		{"https://api.example.no/a%2Fb", "https://api.example.no/a%2Fb"},
		{"https://[::1]:443/a", "https://[::1]/a"},
		{"https://[::1]:8443/a", "https://[::1]:8443/a"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := NormalizeHTU(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"/a", "ftp://x/a", "https://", "https://u:p@host/a", "https://host/a%zz", "mailto:x@y", "https://host/a%4", "https://[fe80::1%25en0]/a"} {
		t.Run("refused "+bad, func(t *testing.T) {
			if got, err := NormalizeHTU(bad); err == nil {
				t.Fatalf("want an error, got %s", got)
			}
		})
	}
}

func FuzzNormalizeHTU(f *testing.F) {
	for _, s := range []string{"https://api.example.no/a/./b/../c?q#f", "HTTP://X:80", "https://[::1]:443/%7e", "https://h/%zz", "/rel", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeHTU(s)
		if err != nil {
			return
		}
		// Normalizing is idempotent.
		again, err := NormalizeHTU(n)
		if err != nil || again != n {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", s, n, again, err)
		}
	})
}
