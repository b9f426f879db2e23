package integration

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// Checks of the gateway's answers: through to the upstream, or a denial with
// its problem body and challenge.

// hostBug recognizes the answer of the gateway when it builds the expected
// htu without a host (see the failure message).
func hostBug(t *testing.T, r reply) {
	t.Helper()
	if r.status == http.StatusBadRequest && strings.Contains(r.body, "the request URI is malformed") {
		t.Fatalf("PRODUCT BUG: a correct DPoP request without public_origin is refused with 400 invalid_request "+
			"\"the request URI is malformed\": caddymodule/module.go authzRequest takes Host from Caddy's "+
			"original-request copy (caddyhttp.OriginalRequestCtxKey), which carries only Method, RemoteAddr, "+
			"RequestURI and URL (no Host, no headers), so the expected htu is \"http://<path>\" and "+
			"authz.NormalizeHTU fails. The Host must come from the current request (r.Host). Got: %s", r)
	}
}

// expectOK checks that the request got through to the upstream.
func expectOK(t *testing.T, r reply) {
	t.Helper()
	hostBug(t, r)
	if r.status != http.StatusOK || r.body != "upstream ok" {
		t.Fatalf("want 200 from the upstream, got %s", r)
	}
}

// expectProblem checks a denial's status and its application/problem+json
// body, and that neither the body nor any header leaks one of secrets.
func expectProblem(t *testing.T, r reply, status int, code string, secrets ...string) {
	t.Helper()
	if r.status != status {
		hostBug(t, r)
		t.Fatalf("status %d, want %d: %s", r.status, status, r)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	var p map[string]any
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("body is not JSON: %v: %q", err, r.body)
	}
	for _, f := range []string{"type", "title", "status", "detail", "error"} {
		if _, ok := p[f]; !ok {
			t.Errorf("problem body lacks %q: %s", f, r.body)
		}
	}
	if st, _ := p["status"].(float64); int(st) != status {
		t.Errorf("problem status %v, want %d", p["status"], status)
	}
	if p["error"] != code {
		t.Errorf("problem error %v, want %q", p["error"], code)
	}
	detail, _ := p["detail"].(string)
	if detail == "" {
		t.Errorf("problem detail is empty")
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(r.body, s) {
			t.Errorf("the problem body leaks %.20q…: %s", s, r.body)
		}
		for name, vals := range r.header {
			for _, v := range vals {
				if strings.Contains(v, s) {
					t.Errorf("response header %s leaks %.20q…", name, s)
				}
			}
		}
	}
}

// expectChallenge checks WWW-Authenticate exactly.
func expectChallenge(t *testing.T, r reply, want ...string) {
	t.Helper()
	got := r.header.Values("WWW-Authenticate")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("WWW-Authenticate %q, want %q", got, want)
	}
}

// expectErrorChallenge checks a WWW-Authenticate of the form
// DPoP error="<code>", error_description="…", algs="<defaultAlgs>".
func expectErrorChallenge(t *testing.T, r reply, code string) {
	t.Helper()
	got := r.header.Values("WWW-Authenticate")
	if len(got) != 1 {
		t.Fatalf("want one WWW-Authenticate, got %q", got)
	}
	prefix := `DPoP error="` + code + `", error_description="`
	suffix := `", algs="` + defaultAlgs + `"`
	if !strings.HasPrefix(got[0], prefix) || !strings.HasSuffix(got[0], suffix) || len(got[0]) <= len(prefix)+len(suffix) {
		t.Errorf("WWW-Authenticate %q, want %s…%s", got[0], prefix, suffix)
	}
}
