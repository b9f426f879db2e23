package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

func TestCaddyfileResourceMetadata(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"bare", "resource_metadata", ""},
		{"path", "resource_metadata /kjernejournal", "/kjernejournal"},
		{"absolute URL", "resource_metadata https://kj.example.no/api", "https://kj.example.no/api"},
		{"placeholder", "resource_metadata {env.KJ_RESOURCE}", "{env.KJ_RESOURCE}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parse(t, "helseid {\n\tissuer https://helseid-sts.nhn.no\n\taudience nhn:kjernejournal\n\t"+tc.line+"\n\tpublic_origin https://kj.example.no\n}")
			if err != nil {
				t.Fatal(err)
			}
			if h.ResourceMetadata == nil || h.ResourceMetadata.Resource != tc.want {
				t.Errorf("ResourceMetadata %+v, want resource %q", h.ResourceMetadata, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name, lines, msg string
		line             int
	}{
		{"two arguments", "resource_metadata /a /b", "wrong argument count", 4},
		{"path without public_origin", "resource_metadata /kj", "needs public_origin", 4},
		{"bare without public_origin", "scopes a\n\tresource_metadata", "needs public_origin", 5},
		{"plain http resource", "resource_metadata http://kj.example.no/api", "https", 4},
		{"relative resource", "resource_metadata kj/api", "absolute", 4},
		{"query in the path", "public_origin https://kj.example.no\n\tresource_metadata /kj?x=1", "query", 5},
		{"duplicate", "public_origin https://kj.example.no\n\tresource_metadata\n\tresource_metadata /kj", "duplicate", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, "helseid {\n\tissuer https://helseid-sts.nhn.no\n\taudience nhn:kjernejournal\n\t"+tc.lines+"\n}")
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("want an error saying %q, got %v", tc.msg, err)
			}
			if want := ":" + strconv.Itoa(tc.line); !strings.HasSuffix(err.Error(), want) {
				t.Errorf("the error %q does not name line %d", err, tc.line)
			}
		})
	}
}

// RFC 9728 §3.1: the well-known segment goes between the host and the path.
func TestWellKnownURL(t *testing.T) {
	for res, want := range map[string]string{
		"https://kj.example.no":               "https://kj.example.no/.well-known/oauth-protected-resource",
		"https://kj.example.no/":              "https://kj.example.no/.well-known/oauth-protected-resource",
		"https://kj.example.no/kjernejournal": "https://kj.example.no/.well-known/oauth-protected-resource/kjernejournal",
		"https://kj.example.no:8443/kj/api/":  "https://kj.example.no:8443/.well-known/oauth-protected-resource/kj/api/",
		"http://127.0.0.1:8080/a%2Fb":         "http://127.0.0.1:8080/.well-known/oauth-protected-resource/a%2Fb",
	} {
		u, err := url.Parse(res)
		if err != nil {
			t.Fatal(err)
		}
		if got := wellKnownURL(u).String(); got != want {
			t.Errorf("wellKnownURL(%s) = %s, want %s", res, got, want)
		}
	}
}

// metadataDoc reads a document strictly into the RFC 9728 members used here.
type metadataDoc struct {
	Resource                           string   `json:"resource"`
	AuthorizationServers               []string `json:"authorization_servers"`
	ScopesSupported                    []string `json:"scopes_supported"`
	BearerMethodsSupported             []string `json:"bearer_methods_supported"`
	DPoPSigningAlgValuesSupported      []string `json:"dpop_signing_alg_values_supported"`
	DPoPBoundAccessTokensRequired      *bool    `json:"dpop_bound_access_tokens_required"`
	AuthorizationDetailsTypesSupported []string `json:"authorization_details_types_supported"`
}

func TestServeHTTPResourceMetadata(t *testing.T) {
	f := newHandlerFixture(t, func(h *Handler) {
		h.PublicOrigin = "http://gw.example"
		h.ResourceMetadata = &ResourceMetadata{Resource: "/kjernejournal"}
		h.DPoPAlgorithms = []string{"ES256", "PS256"}
	})
	const wk = "http://gw.example/.well-known/oauth-protected-resource/kjernejournal"

	w := httptest.NewRecorder()
	next := &recordingNext{}
	if err := f.h.ServeHTTP(w, f.request(t, "GET", wk, "", ""), next); err != nil {
		t.Fatal(err)
	}
	if next.called || w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("next called %v, status %d, type %q", next.called, w.Code, w.Header().Get("Content-Type"))
	}
	var doc metadataDoc
	dec := json.NewDecoder(w.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Resource != "http://gw.example/kjernejournal" ||
		strings.Join(doc.AuthorizationServers, " ") != f.sim.Issuer() ||
		strings.Join(doc.ScopesSupported, " ") != "nhn:kjernejournal/api" ||
		strings.Join(doc.BearerMethodsSupported, " ") != "header" ||
		strings.Join(doc.DPoPSigningAlgValuesSupported, " ") != "ES256 PS256" ||
		doc.DPoPBoundAccessTokensRequired == nil || !*doc.DPoPBoundAccessTokensRequired ||
		doc.AuthorizationDetailsTypesSupported != nil {
		t.Errorf("document %+v", doc)
	}

	// HEAD: the headers only. POST: 405.
	w = httptest.NewRecorder()
	_ = f.h.ServeHTTP(w, f.request(t, "HEAD", wk, "", ""), next)
	if w.Code != http.StatusOK || w.Body.Len() != 0 || next.called {
		t.Errorf("HEAD: status %d, %d body bytes", w.Code, w.Body.Len())
	}
	w = httptest.NewRecorder()
	_ = f.h.ServeHTTP(w, f.request(t, "POST", wk, "", ""), next)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" || next.called {
		t.Errorf("POST: status %d, Allow %q", w.Code, w.Header().Get("Allow"))
	}

	// Another well-known path is not this route's: it needs credentials.
	w = httptest.NewRecorder()
	_ = f.h.ServeHTTP(w, f.request(t, "GET", "http://gw.example/.well-known/oauth-protected-resource/other", "", ""), next)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("another resource's well-known path: status %d", w.Code)
	}

	// 401 challenges name the document (RFC 9728 §5.1).
	wantParam := `resource_metadata="` + wk + `"`
	if got := w.Header().Get("WWW-Authenticate"); got != `DPoP algs="ES256 PS256", `+wantParam {
		t.Errorf("no credentials: WWW-Authenticate %q", got)
	}
	tok := f.token(t, helseidsim.TokenSpec{OrgParent: "917897468"})
	w = httptest.NewRecorder()
	r := f.request(t, "GET", "http://gw.example/kjernejournal/api", tok, "http://gw.example/kjernejournal/other")
	_ = f.h.ServeHTTP(w, r, next)
	if got := w.Header().Get("WWW-Authenticate"); w.Code != http.StatusUnauthorized || !strings.HasPrefix(got, `DPoP error="invalid_dpop_proof"`) || !strings.HasSuffix(got, ", "+wantParam) {
		t.Errorf("bad proof: status %d, WWW-Authenticate %q", w.Code, got)
	}
}

// helseid_environment from a runtime placeholder ({env.*}) is checked at
// Provision, once resolved; so is a JSON config's "environment".
func TestProvisionEnvironment(t *testing.T) {
	t.Setenv("HELSEGATE_TEST_ENVIRONMENT", "production")
	for _, tc := range []struct {
		name, env, issuer string
		fail              bool
	}{
		{"placeholder: production, test issuer", "{env.HELSEGATE_TEST_ENVIRONMENT}", "https://helseid-sts.test.nhn.no", true},
		{"placeholder: production, production issuer", "{env.HELSEGATE_TEST_ENVIRONMENT}", "https://helseid-sts.nhn.no", false},
		{"test, production issuer", "test", "https://helseid-sts.nhn.no", true},
		{"unknown environment", "staging", "https://helseid-sts.nhn.no", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{Issuer: tc.issuer, Audience: "nhn:kjernejournal", Environment: tc.env}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := h.Provision(ctx)
			_ = h.Cleanup()
			if (err != nil) != tc.fail {
				t.Fatalf("Provision: %v, want failure %v", err, tc.fail)
			}
		})
	}
}

// A JSON config without public_origin or an absolute resource does not
// provision: the resource identifier must not follow the Host header.
func TestProvisionResourceMetadataNeedsOrigin(t *testing.T) {
	h := &Handler{Issuer: "https://helseid-sts.nhn.no", Audience: "nhn:kjernejournal", ResourceMetadata: &ResourceMetadata{Resource: "/kj"}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := h.Provision(ctx)
	_ = h.Cleanup()
	if err == nil || !strings.Contains(err.Error(), "public_origin") {
		t.Fatalf("Provision: %v, want an error naming public_origin", err)
	}
}
