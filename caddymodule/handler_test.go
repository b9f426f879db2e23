package caddymodule

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

type handlerFixture struct {
	sim *helseidsim.Server
	key *dpopclient.Key
	h   *Handler
}

func newHandlerFixture(t *testing.T, mod func(*Handler)) *handlerFixture {
	t.Helper()
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	key, err := dpopclient.NewKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Issuer: sim.Issuer(), Audience: "nhn:kjernejournal", Scopes: []string{"nhn:kjernejournal/api"}}
	if mod != nil {
		mod(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return &handlerFixture{sim: sim, key: key, h: h}
}

func (f *handlerFixture) token(t *testing.T, spec helseidsim.TokenSpec) string {
	t.Helper()
	if spec.JKT == "" {
		spec.JKT = f.key.Thumbprint()
	}
	tok, err := f.sim.Mint(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// request builds a request as Caddy hands it to a handler: with a replacer,
// the original request and (optionally) a server in the context.
func (f *handlerFixture) request(t *testing.T, method, target, token, htu string) *http.Request {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	if token != "" {
		proof, err := f.key.Proof(method, htu, token, dpopclient.ProofOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", "DPoP "+token)
		r.Header.Set("DPoP", proof)
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	// Caddy's copy of the original request carries only these fields.
	u := *r.URL
	orig := http.Request{Method: r.Method, RequestURI: r.RequestURI, URL: &u}
	ctx = context.WithValue(ctx, caddyhttp.OriginalRequestCtxKey, orig)
	return r.WithContext(ctx)
}

type recordingNext struct {
	called bool
	header http.Header
}

func (n *recordingNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called = true
	n.header = r.Header.Clone()
	w.WriteHeader(http.StatusOK)
	return nil
}

func TestServeHTTPAllowed(t *testing.T) {
	f := newHandlerFixture(t, nil)
	tok := f.token(t, helseidsim.TokenSpec{OrgParent: "917897468", OrgChild: "922734046", PID: "17056600574", SecurityLevel: "4", HPRNumber: "431001110"})
	r := f.request(t, "GET", "http://example.com/fhir/Patient?x=1", tok, "http://example.com/fhir/Patient")
	r.Header.Set("X-Helseid-Org-Parent", "999999999")
	r.Header["X_helseid_token_kind"] = []string{"machine"}
	r.Header["x-HELSEID-pid"] = []string{"spoof"}
	next := &recordingNext{}
	w := httptest.NewRecorder()
	if err := f.h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if !next.called {
		t.Fatalf("next not called; status %d body %s", w.Code, w.Body)
	}
	want := map[string]string{
		"X-Helseid-Org-Parent":     "917897468",
		"X-Helseid-Org-Child":      "922734046",
		"X-Helseid-Client-Id":      helseidsim.DefaultClientID,
		"X-Helseid-Token-Kind":     "user",
		"X-Helseid-Security-Level": "4",
		"X-Helseid-Hpr-Number":     "431001110",
		"X-Helseid-Dpop-Jkt":       f.key.Thumbprint(),
	}
	for k, v := range want {
		if got := next.header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	for k, vs := range next.header {
		for _, v := range vs {
			if v == "spoof" || v == "machine" || v == "999999999" || strings.Contains(v, "17056600574") {
				t.Errorf("upstream header %s carries %q", k, v)
			}
		}
	}
	if next.header.Get("Authorization") == "" || next.header.Get("DPoP") == "" {
		t.Error("Authorization and DPoP must be forwarded by default")
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for ph, v := range map[string]string{
		"http.auth.user.id":         helseidsim.DefaultClientID,
		"http.auth.user.client_id":  helseidsim.DefaultClientID,
		"http.auth.user.org_parent": "917897468",
		"http.auth.user.token_kind": "user",
		"http.auth.user.jkt":        f.key.Thumbprint(),
	} {
		if got, _ := repl.GetString(ph); got != v {
			t.Errorf("{%s} = %q, want %q", ph, got, v)
		}
	}
}

func TestServeHTTPForwardTokenOff(t *testing.T) {
	f := newHandlerFixture(t, func(h *Handler) { h.StripToken = true })
	tok := f.token(t, helseidsim.TokenSpec{OrgParent: "917897468"})
	next := &recordingNext{}
	if err := f.h.ServeHTTP(httptest.NewRecorder(), f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a"), next); err != nil {
		t.Fatal(err)
	}
	if !next.called || next.header.Get("Authorization") != "" || next.header.Get("DPoP") != "" {
		t.Fatalf("forward_token off must strip Authorization and DPoP: %v", next.header)
	}
}

func TestServeHTTPOriginalURI(t *testing.T) {
	f := newHandlerFixture(t, nil)
	tok := f.token(t, helseidsim.TokenSpec{})
	// The client signed /kj/fhir; a rewrite (handle_path) has since made it /fhir.
	r := f.request(t, "GET", "http://example.com/kj/fhir", tok, "http://example.com/kj/fhir")
	r.URL.Path = "/fhir"
	next := &recordingNext{}
	if err := f.h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil || !next.called {
		t.Fatalf("proof for the original URI refused: %v", err)
	}
}

// Over TLS the expected htu is https, whatever the URL says.
func TestServeHTTPSchemeFromTLS(t *testing.T) {
	f := newHandlerFixture(t, nil)
	tok := f.token(t, helseidsim.TokenSpec{})
	for _, tc := range []struct {
		htu string
		ok  bool
	}{{"https://example.com/a", true}, {"http://example.com/a", false}} {
		r := f.request(t, "GET", "http://example.com/a", tok, tc.htu)
		r.TLS = &tls.ConnectionState{}
		next := &recordingNext{}
		w := httptest.NewRecorder()
		if err := f.h.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
		if next.called != tc.ok {
			t.Errorf("htu %s over TLS: passed %v, want %v (%d %s)", tc.htu, next.called, tc.ok, w.Code, w.Header().Get("WWW-Authenticate"))
		}
	}
}

func TestServeHTTPDenials(t *testing.T) {
	f := newHandlerFixture(t, nil)
	algs := `algs="RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512"`
	cases := []struct {
		name      string
		req       func() *http.Request
		status    int
		challenge string
		code      string
	}{
		{"no credentials", func() *http.Request { return f.request(t, "GET", "http://example.com/a", "", "") },
			401, "DPoP " + algs, "unauthorized"},
		{"token in query", func() *http.Request {
			tok := f.token(t, helseidsim.TokenSpec{})
			return f.request(t, "GET", "http://example.com/a?access_token=x", tok, "http://example.com/a")
		}, 400, `DPoP error="invalid_request"`, "invalid_request"},
		{"expired token", func() *http.Request {
			tok := f.token(t, helseidsim.TokenSpec{Lifetime: -time.Minute})
			return f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a")
		}, 401, `DPoP error="invalid_token", error_description="the access token has expired", ` + algs, "invalid_token"},
		{"proof for another path", func() *http.Request {
			tok := f.token(t, helseidsim.TokenSpec{})
			return f.request(t, "GET", "http://example.com/a", tok, "http://example.com/b")
		}, 401, `DPoP error="invalid_dpop_proof", error_description="the DPoP proof URI does not match the request", ` + algs, "invalid_dpop_proof"},
		{"missing scope", func() *http.Request {
			tok := f.token(t, helseidsim.TokenSpec{Scopes: []string{"openid"}})
			return f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a")
		}, 403, `DPoP error="insufficient_scope", scope="nhn:kjernejournal/api"`, "insufficient_scope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			next := &recordingNext{}
			if err := f.h.ServeHTTP(w, tc.req(), next); err != nil {
				t.Fatal(err)
			}
			if next.called {
				t.Fatal("a denied request reached the upstream")
			}
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d", w.Code, tc.status)
			}
			if got := w.Header().Get("WWW-Authenticate"); got != tc.challenge {
				t.Fatalf("WWW-Authenticate\n got %s\nwant %s", got, tc.challenge)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			var p problem
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.Status != tc.status || p.Error != tc.code || p.Title == "" || p.Type == "" || p.Detail == "" {
				t.Fatalf("problem body %+v", p)
			}
		})
	}
}

// Without scopes in the config, a 403 for the token kind names no scope
// (RFC 6749 §3.3: a scope is at least one token).
func TestServeHTTPInsufficientScopeWithoutScopes(t *testing.T) {
	f := newHandlerFixture(t, func(h *Handler) { h.Scopes = nil; h.TokenKind = "user" })
	tok := f.token(t, helseidsim.TokenSpec{OrgParent: "917897468"}) // a machine token
	w := httptest.NewRecorder()
	if err := f.h.ServeHTTP(w, f.request(t, "GET", "http://example.com/a", tok, "http://example.com/a"), &recordingNext{}); err != nil {
		t.Fatal(err)
	}
	if got, want := w.Header().Get("WWW-Authenticate"), `DPoP error="insufficient_scope"`; w.Code != 403 || got != want {
		t.Fatalf("got %d %q, want 403 %q", w.Code, got, want)
	}
}

// expr is a provisioned expression matcher, as handle_errors <codes> makes.
func expr(t *testing.T, e string) caddyhttp.MatcherSets {
	t.Helper()
	m := &caddyhttp.MatchExpression{Expr: e}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := m.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return caddyhttp.MatcherSets{caddyhttp.MatcherSet{m}}
}

func TestServeHTTPErrorRoutes(t *testing.T) {
	respond := func() caddyhttp.MiddlewareHandler { return &caddyhttp.StaticResponse{} }
	host := func(h string) caddyhttp.MatcherSets {
		return caddyhttp.MatcherSets{caddyhttp.MatcherSet{caddyhttp.MatchHost{h}}}
	}
	sub := func(routes ...caddyhttp.Route) caddyhttp.MiddlewareHandler {
		return &caddyhttp.Subroute{Routes: routes}
	}
	for _, tc := range []struct {
		name   string
		routes caddyhttp.RouteList
		answer bool // the error routes answer: the handler returns the error
	}{
		{"a route for every request", caddyhttp.RouteList{{Handlers: []caddyhttp.MiddlewareHandler{respond()}}}, true},
		{"this site's handle_errors", caddyhttp.RouteList{{MatcherSets: host("example.com"), Handlers: []caddyhttp.MiddlewareHandler{sub(caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{respond()}})}}}, true},
		{"another site's handle_errors", caddyhttp.RouteList{{MatcherSets: host("other.example"), Handlers: []caddyhttp.MiddlewareHandler{respond()}}}, false},
		{"this site's, for other requests only", caddyhttp.RouteList{{MatcherSets: host("example.com"), Handlers: []caddyhttp.MiddlewareHandler{sub(caddyhttp.Route{MatcherSets: host("nope.example"), Handlers: []caddyhttp.MiddlewareHandler{respond()}})}}}, false},
		{"a route without handlers", caddyhttp.RouteList{{}}, false},
		{"handle_errors 4xx (an expression on the error)", caddyhttp.RouteList{{MatcherSets: expr(t, "{http.error.status_code} >= 400 && {http.error.status_code} <= 499"), Handlers: []caddyhttp.MiddlewareHandler{respond()}}}, true},
		{"handle_errors 5xx", caddyhttp.RouteList{{MatcherSets: expr(t, "{http.error.status_code} >= 500"), Handlers: []caddyhttp.MiddlewareHandler{respond()}}}, false},
		{"a terminal route that does not answer stops the list", caddyhttp.RouteList{
			{MatcherSets: host("example.com"), Terminal: true, Handlers: []caddyhttp.MiddlewareHandler{sub(caddyhttp.Route{MatcherSets: host("nope.example"), Handlers: []caddyhttp.MiddlewareHandler{respond()}})}},
			{Handlers: []caddyhttp.MiddlewareHandler{respond()}},
		}, false},
		{"a route that does not answer passes on", caddyhttp.RouteList{
			{MatcherSets: host("example.com"), Handlers: []caddyhttp.MiddlewareHandler{sub(caddyhttp.Route{MatcherSets: host("nope.example"), Handlers: []caddyhttp.MiddlewareHandler{respond()}})}},
			{Handlers: []caddyhttp.MiddlewareHandler{respond()}},
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newHandlerFixture(t, nil)
			r := f.request(t, "GET", "http://example.com/a", "", "")
			srv := &caddyhttp.Server{Errors: &caddyhttp.HTTPErrorConfig{Routes: tc.routes}}
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ServerCtxKey, srv))
			w := httptest.NewRecorder()
			err := f.h.ServeHTTP(w, r, &recordingNext{})
			if w.Header().Get("WWW-Authenticate") == "" {
				t.Fatal("no challenge")
			}
			if tc.answer {
				var he caddyhttp.HandlerError
				if !errors.As(err, &he) || he.StatusCode != 401 {
					t.Fatalf("want a 401 HandlerError for the error routes, got %v", err)
				}
				if w.Body.Len() != 0 {
					t.Fatal("the handler wrote a body the error routes should write")
				}
				return
			}
			if err != nil {
				t.Fatalf("no error route answers: want the problem body written, got error %v", err)
			}
			if w.Code != 401 || w.Header().Get("Content-Type") != "application/problem+json" || w.Body.Len() == 0 {
				t.Fatalf("got %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
			}
		})
	}
}

func TestStripIdentityHeaders(t *testing.T) {
	h := http.Header{}
	h["X-Helseid-Org-Parent"] = []string{"1"}
	h["x-helseid-org-child"] = []string{"2"}
	h["X_Helseid_Client_Id"] = []string{"3"}
	h["X-HELSEID_pid"] = []string{"4"}
	h["X-Helseidx"] = []string{"keep"}
	h["Authorization"] = []string{"keep"}
	stripIdentityHeaders(h)
	if len(h) != 2 || h.Get("Authorization") != "keep" || h.Get("X-Helseidx") != "keep" {
		t.Fatalf("left %v", h)
	}
}

// A Redis URL placeholder that resolves to nothing is a config error; the
// in-process store must be asked for with "none".
func TestProvisionRedisURLPlaceholder(t *testing.T) {
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	for _, tc := range []struct {
		value   string
		wantErr bool
	}{{"", true}, {"none", false}} {
		t.Setenv("HG_TEST_REDIS_URL", tc.value)
		h := &Handler{Issuer: sim.Issuer(), Audience: "nhn:kjernejournal", Redis: &cache.RedisConfig{URL: "{env.HG_TEST_REDIS_URL}"}}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := h.Provision(ctx)
		_ = h.Cleanup()
		cancel()
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "{env.HG_TEST_REDIS_URL} is empty") {
				t.Errorf("REDIS_URL %q: Provision = %v, want the empty-placeholder error", tc.value, err)
			}
			continue
		}
		if err != nil || h.Redis != nil {
			t.Errorf("REDIS_URL %q: Provision = %v, Redis %+v; want the in-process store", tc.value, err, h.Redis)
		}
	}
}
