package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// registryServer is an httptest registry that counts requests and new
// connections.
type registryServer struct {
	*httptest.Server
	hits  atomic.Int64
	conns atomic.Int64
}

func newRegistry(t *testing.T, h http.HandlerFunc) *registryServer {
	t.Helper()
	rs := &registryServer{}
	rs.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rs.hits.Add(1)
		h(w, r)
	}))
	rs.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			rs.conns.Add(1)
		}
	}
	rs.Start()
	t.Cleanup(rs.Close)
	return rs
}

// newSource returns an HTTP source for base with a fake clock; mod edits the
// config first.
func newSource(t *testing.T, base string, mod func(*HTTPConfig)) (*HTTP, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	cfg := HTTPConfig{BaseURL: base, Token: testToken, Clock: clock}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHTTP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h, clock
}

// recordJSON is a 200 body of contract v1.
func recordJSON(org, service string) string {
	return fmt.Sprintf(`{"organization":%q,"service":%q,"member":true,"status":"active",`+
		`"valid_from":"2025-01-01T00:00:00Z","valid_to":null}`, org, service)
}

// reply answers every request with status and body.
func reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}
}

func TestHTTPLookup(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		wantErr    error // nil: an answer
		wantRecord bool
	}{
		{"200 member", 200, recordJSON(orgA, testSvc), nil, true},
		{"200 with whitespace around the body", 200, "\n " + recordJSON(orgA, testSvc) + "\n", nil, true},
		{"200 with unknown fields", 200, `{"organization":"917897468","service":"kjernejournal","member":true,"status":"active","valid_from":"2025-01-01T00:00:00Z","valid_to":null,"note":"x"}`, nil, true},
		{"200 for another organization", 200, recordJSON(orgB, testSvc), authz.ErrRegistryUnavailable, false},
		{"200 for another service", 200, recordJSON(orgA, "persontjenesten"), authz.ErrRegistryUnavailable, false},
		{"200 with bad JSON", 200, `{"organization":`, authz.ErrRegistryUnavailable, false},
		{"200 with an HTML page", 200, `<html>login</html>`, authz.ErrRegistryUnavailable, false},
		{"200 with trailing data", 200, recordJSON(orgA, testSvc) + "{}", authz.ErrRegistryUnavailable, false},
		{"200 larger than 64 KiB", 200, recordJSON(orgA, testSvc) + strings.Repeat(" ", maxBody), authz.ErrRegistryUnavailable, false},
		{"200 with member twice", 200, `{"organization":"917897468","service":"kjernejournal","member":false,"member":true,"status":"active","valid_to":null}`, authz.ErrRegistryUnavailable, false},
		{"200 with member and MEMBER", 200, `{"organization":"917897468","service":"kjernejournal","member":false,"MEMBER":true,"status":"active","valid_to":null}`, authz.ErrRegistryUnavailable, false},
		{"200 with Status only", 200, `{"organization":"917897468","service":"kjernejournal","member":true,"Status":"active","valid_to":null}`, authz.ErrRegistryUnavailable, false},
		{"200 with valid_to twice", 200, `{"organization":"917897468","service":"kjernejournal","member":true,"status":"active","valid_to":"2020-01-01T00:00:00Z","valid_to":null}`, authz.ErrRegistryUnavailable, false},
		{"404 is a definite no", 404, `{"error":"not found"}`, nil, false},
		{"401", 401, "", authz.ErrRegistryConfig, false},
		{"403", 403, "", authz.ErrRegistryConfig, false},
		{"429", 429, "", authz.ErrRegistryUnavailable, false},
		{"500", 500, "", authz.ErrRegistryUnavailable, false},
		{"503", 503, "", authz.ErrRegistryUnavailable, false},
		{"400", 400, "", authz.ErrRegistryUnavailable, false},
		{"410", 410, "", authz.ErrRegistryUnavailable, false},
		{"302 is not followed", 302, "", authz.ErrRegistryUnavailable, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := newRegistry(t, reply(tt.status, tt.body))
			h, clock := newSource(t, rs.URL, nil)
			ans, err := h.Lookup(context.Background(), testSvc, orgA)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), orgA) {
					t.Errorf("error names the organization: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ans.Source != SourceRegistry || !ans.FetchedAt.Equal(clock.Now()) || ans.Stale {
				t.Errorf("answer = %+v, want Source registry, FetchedAt %v", ans, clock.Now())
			}
			if got := ans.Record != nil; got != tt.wantRecord {
				t.Fatalf("record = %+v, want present %v", ans.Record, tt.wantRecord)
			}
			if tt.wantRecord {
				r := ans.Record
				if r.Organization != orgA || r.Service != testSvc || !r.Member || r.Status != testStatus ||
					r.ValidFrom == nil || r.ValidTo != nil {
					t.Errorf("record = %+v", r)
				}
				if ok, reason := ans.Decide(clock.Now()); !ok {
					t.Errorf("Decide = %s, want member", reason)
				}
			}
		})
	}
}

func TestHTTPConfigErrorLoggedOnce(t *testing.T) {
	for _, status := range []int{401, 403} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			rs := newRegistry(t, reply(status, `{"error":"unauthorized"}`))
			log, logs := observed()
			b := cache.NewBreaker("test", cache.WithHalfOpenAfter(time.Hour))
			h, clock := newSource(t, rs.URL, func(c *HTTPConfig) { c.Logger = log; c.Breaker = b })

			const calls = 50
			for i := 0; i < calls; i++ {
				if _, err := h.Lookup(context.Background(), testSvc, orgA); !errors.Is(err, authz.ErrRegistryConfig) {
					t.Fatalf("call %d: err = %v, want ErrRegistryConfig", i, err)
				}
				clock.Advance(time.Second) // 50s in all: still inside the minute
			}
			if n := logs.FilterLevelExact(zapErrorLevel).Len(); n != 1 {
				t.Errorf("%d Error logs for %d calls, want 1", n, calls)
			}
			if got := rs.hits.Load(); got != calls {
				t.Errorf("server hits = %d, want %d: a config error must not trip the breaker", got, calls)
			}
			if s := b.State(); s != "closed" {
				t.Errorf("breaker %s, want closed", s)
			}

			clock.Advance(configLogEvery)
			_, _ = h.Lookup(context.Background(), testSvc, orgA)
			if n := logs.FilterLevelExact(zapErrorLevel).Len(); n != 2 {
				t.Errorf("%d Error logs a minute later, want 2", n)
			}
		})
	}
}

func TestHTTPTimeout(t *testing.T) {
	rs := newRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	h, _ := newSource(t, rs.URL, func(c *HTTPConfig) { c.Timeout = 50 * time.Millisecond })
	_, err := h.Lookup(context.Background(), testSvc, orgA)
	if !errors.Is(err, authz.ErrRegistryUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrRegistryUnavailable and DeadlineExceeded", err)
	}
	if strings.Contains(err.Error(), orgA) {
		t.Errorf("error names the organization: %v", err)
	}
}

// slowTransport is a registry that never answers: each call is counted as
// it is made and waits for its context. A server that never answers would
// count a call only once the request reached it, which on a starved machine
// can come after the call's timeout (or never): this one counts every call
// the source makes, whatever the scheduler does.
type slowTransport struct{ calls atomic.Int64 }

func (s *slowTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	s.calls.Add(1)
	<-r.Context().Done()
	return nil, r.Context().Err()
}

func TestHTTPBreakerOpens(t *testing.T) {
	tests := []struct {
		name string
		h    http.HandlerFunc // nil: slowTransport
	}{
		{"500", reply(500, "")},
		{"429", reply(429, "")},
		{"bad JSON", reply(200, "{")},
		{"mismatched record", reply(200, recordJSON(orgB, testSvc))},
		{"slow", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, client := "http://127.0.0.1:1", (*http.Client)(nil)
			var calls func() int64
			if tt.h == nil {
				st := &slowTransport{}
				client, calls = &http.Client{Transport: st}, st.calls.Load
			} else {
				rs := newRegistry(t, tt.h)
				base, calls = rs.URL, rs.hits.Load
			}
			b := cache.NewBreaker("test", cache.WithHalfOpenAfter(time.Hour))
			h, _ := newSource(t, base, func(c *HTTPConfig) {
				c.Breaker = b
				c.Client = client
				c.Timeout = 50 * time.Millisecond
			})
			for i := 0; i < cache.BreakerFailures; i++ {
				if _, err := h.Lookup(context.Background(), testSvc, orgA); !errors.Is(err, authz.ErrRegistryUnavailable) {
					t.Fatalf("call %d: err = %v", i, err)
				}
			}
			if s := b.State(); s != "open" {
				t.Fatalf("breaker %s after %d failures, want open", s, cache.BreakerFailures)
			}
			_, err := h.Lookup(context.Background(), testSvc, orgA)
			if !errors.Is(err, authz.ErrRegistryUnavailable) || !errors.Is(err, cache.ErrBreakerOpen) {
				t.Fatalf("err = %v, want ErrRegistryUnavailable from the open breaker", err)
			}
			if got := calls(); got != cache.BreakerFailures {
				t.Errorf("registry calls = %d, want %d: the open breaker must not call", got, cache.BreakerFailures)
			}
		})
	}
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		b := cache.NewBreaker("test", cache.WithHalfOpenAfter(time.Hour))
		h, _ := newSource(t, "http://"+addr, func(c *HTTPConfig) { c.Breaker = b })
		for i := 0; i < cache.BreakerFailures; i++ {
			if _, err := h.Lookup(context.Background(), testSvc, orgA); !errors.Is(err, authz.ErrRegistryUnavailable) {
				t.Fatalf("call %d: err = %v", i, err)
			}
		}
		if _, err := h.Lookup(context.Background(), testSvc, orgA); !errors.Is(err, cache.ErrBreakerOpen) {
			t.Fatalf("err = %v, want the open breaker", err)
		}
	})
}

func TestHTTPCallerGone(t *testing.T) {
	rs := newRegistry(t, reply(200, recordJSON(orgA, testSvc)))
	b := cache.NewBreaker("test", cache.WithHalfOpenAfter(time.Hour))
	h, _ := newSource(t, rs.URL, func(c *HTTPConfig) { c.Breaker = b })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 2*cache.BreakerFailures; i++ {
		_, err := h.Lookup(ctx, testSvc, orgA)
		if !errors.Is(err, authz.ErrRegistryUnavailable) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want ErrRegistryUnavailable and Canceled", err)
		}
	}
	if s := b.State(); s != "closed" {
		t.Errorf("breaker %s: a caller that went away is not a registry failure", s)
	}
	if n := rs.hits.Load(); n != 0 {
		t.Errorf("server hits = %d for a dead context, want 0", n)
	}
}

func TestHTTPRequest(t *testing.T) {
	tests := []struct {
		name     string
		token    string
		wantAuth string
	}{
		{"with token", testToken, "Bearer " + testToken},
		{"without token", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got http.Header
			rs := newRegistry(t, func(w http.ResponseWriter, r *http.Request) {
				got = r.Header.Clone()
				reply(200, recordJSON(orgA, testSvc))(w, r)
			})
			h, _ := newSource(t, rs.URL, func(c *HTTPConfig) { c.Token = tt.token })
			if _, err := h.Lookup(context.Background(), testSvc, orgA); err != nil {
				t.Fatal(err)
			}
			if a := got.Get("Authorization"); a != tt.wantAuth {
				t.Errorf("Authorization = %q, want %q", a, tt.wantAuth)
			}
			if a := got.Get("Accept"); a != "application/json" {
				t.Errorf("Accept = %q", a)
			}
		})
	}
}

// TestHTTPTokenNeverLogged drives every logging path with a Debug logger and
// looks for the token in every entry and every error.
func TestHTTPTokenNeverLogged(t *testing.T) {
	handlers := map[string]http.HandlerFunc{
		"401":      reply(401, testToken),
		"403":      reply(403, ""),
		"500":      reply(500, testToken),
		"418":      reply(418, ""),
		"bad JSON": reply(200, `{"organization":"`+testToken),
		"mismatch": reply(200, recordJSON(orgB, testSvc)),
		"slow":     func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
	}
	log, logs := observed()
	var errs []error
	for name, hf := range handlers {
		rs := newRegistry(t, hf)
		h, _ := newSource(t, rs.URL, func(c *HTTPConfig) {
			c.Logger = log
			c.Timeout = 50 * time.Millisecond
		})
		_, err := h.Lookup(context.Background(), testSvc, orgA)
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		errs = append(errs, err)
	}
	if logs.Len() == 0 {
		t.Fatal("nothing logged: the test proves nothing")
	}
	for _, e := range logs.All() {
		if txt := entryText(e); strings.Contains(txt, testToken) {
			t.Errorf("token logged: %s", txt)
		}
		if e.Level > zapDebugLevel && strings.Contains(entryText(e), orgA) {
			t.Errorf("organization logged above Debug: %s", entryText(e))
		}
	}
	for _, err := range errs {
		if strings.Contains(err.Error(), testToken) {
			t.Errorf("token in error: %v", err)
		}
	}
}

func TestHTTPPathEscaping(t *testing.T) {
	tests := []struct {
		name, base, service, wantURI string
	}{
		{"plain", "", "kjernejournal", "/v1/organizations/917897468/services/kjernejournal"},
		{"slash", "", "a/b", "/v1/organizations/917897468/services/a%2Fb"},
		{"space", "", "a b", "/v1/organizations/917897468/services/a%20b"},
		{"query and fragment characters", "", "x?y#z", "/v1/organizations/917897468/services/x%3Fy%23z"},
		{"percent", "", "100%", "/v1/organizations/917897468/services/100%25"},
		{"non-ASCII", "", "tjeneste-æøå", "/v1/organizations/917897468/services/tjeneste-%C3%A6%C3%B8%C3%A5"},
		{"base path", "/adapter", "kjernejournal", "/adapter/v1/organizations/917897468/services/kjernejournal"},
		{"base path with slash", "/adapter/", "kjernejournal", "/adapter/v1/organizations/917897468/services/kjernejournal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var uri string
			rs := newRegistry(t, func(w http.ResponseWriter, r *http.Request) {
				uri = r.RequestURI
				b, _ := json.Marshal(authz.Authorization{Organization: orgA, Service: tt.service, Member: true, Status: testStatus})
				_, _ = w.Write(b)
			})
			h, _ := newSource(t, rs.URL+tt.base, nil)
			ans, err := h.Lookup(context.Background(), tt.service, orgA)
			if err != nil {
				t.Fatal(err)
			}
			if uri != tt.wantURI {
				t.Errorf("request URI = %q, want %q", uri, tt.wantURI)
			}
			if ans.Record == nil || ans.Record.Service != tt.service {
				t.Errorf("record = %+v", ans.Record)
			}
		})
	}
}

func TestHTTPLocalRefusals(t *testing.T) {
	tests := []struct {
		name, service, org string
		wantErr            error
	}{
		{"invalid org number is a no without a call", testSvc, orgBadMod, nil},
		{"empty org is a no without a call", testSvc, "", nil},
		{"org with a path", testSvc, "../../admin", nil},
		{"empty service", "", orgA, authz.ErrRegistryConfig},
		{"dot-dot service", "..", orgA, authz.ErrRegistryConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := newRegistry(t, reply(200, recordJSON(orgA, testSvc)))
			h, _ := newSource(t, rs.URL, nil)
			ans, err := h.Lookup(context.Background(), tt.service, tt.org)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if ans.Record != nil {
				t.Errorf("record = %+v, want none", ans.Record)
			}
			if n := rs.hits.Load(); n != 0 {
				t.Errorf("server hits = %d, want 0", n)
			}
		})
	}
}

func TestHTTPConnectionReuse(t *testing.T) {
	bodies := []struct {
		status int
		body   string
	}{
		{200, recordJSON(orgA, testSvc)},
		{404, strings.Repeat("x", 8<<10)}, // a body nobody reads must still be drained
		{401, `{"error":"who are you"}`},
		{200, recordJSON(orgB, testSvc)}, // mismatched: rejected, still drained
	}
	var n atomic.Int64
	rs := newRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		b := bodies[int(n.Add(1)-1)%len(bodies)]
		reply(b.status, b.body)(w, r)
	})
	h, _ := newSource(t, rs.URL, nil)
	const calls = 20
	for i := 0; i < calls; i++ {
		_, _ = h.Lookup(context.Background(), testSvc, orgA)
	}
	if got := rs.hits.Load(); got != calls {
		t.Fatalf("server hits = %d, want %d", got, calls)
	}
	if got := rs.conns.Load(); got != 1 {
		t.Errorf("%d connections for %d sequential calls, want 1", got, calls)
	}
}

func TestNewHTTP(t *testing.T) {
	tests := []struct {
		name    string
		cfg     HTTPConfig
		wantErr string
	}{
		{"https", HTTPConfig{BaseURL: "https://medlem.example.no"}, ""},
		{"https with path", HTTPConfig{BaseURL: "https://medlem.example.no/adapter/"}, ""},
		{"http loopback", HTTPConfig{BaseURL: "http://127.0.0.1:8080"}, ""},
		{"http localhost", HTTPConfig{BaseURL: "http://localhost:8080"}, ""},
		{"http IPv6 loopback", HTTPConfig{BaseURL: "http://[::1]:8080"}, ""},
		{"http elsewhere", HTTPConfig{BaseURL: "http://medlem.example.no"}, "https"},
		{"relative", HTTPConfig{BaseURL: "/v1"}, "absolute"},
		{"empty", HTTPConfig{}, "absolute"},
		{"other scheme", HTTPConfig{BaseURL: "ftp://medlem.example.no"}, "absolute"},
		{"query", HTTPConfig{BaseURL: "https://medlem.example.no?x=1"}, "query"},
		{"user info", HTTPConfig{BaseURL: "https://u:p@medlem.example.no"}, "credentials"},
		{"negative timeout", HTTPConfig{BaseURL: "https://medlem.example.no", Timeout: -time.Second}, "negative"},
		{"token with a newline", HTTPConfig{BaseURL: "https://medlem.example.no", Token: testToken + "\r\nX-Evil: 1"}, "token"},
		{"token with a space", HTTPConfig{BaseURL: "https://medlem.example.no", Token: "a b"}, "token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := NewHTTP(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if h.timeout != DefaultTimeout || h.breaker == nil || h.clock == nil || h.log == nil {
					t.Errorf("defaults not set: %+v", h)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
			}
			if tt.cfg.Token != "" && strings.Contains(err.Error(), tt.cfg.Token) {
				t.Errorf("token in error: %v", err)
			}
		})
	}
}

func TestDefaultClient(t *testing.T) {
	c := defaultClient()
	if c.Timeout != 0 {
		t.Errorf("client timeout %s: the per-call context timeout must rule", c.Timeout)
	}
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport %T", c.Transport)
	}
	if tr.MaxIdleConnsPerHost != 64 || tr.DisableKeepAlives {
		t.Errorf("MaxIdleConnsPerHost %d, DisableKeepAlives %v", tr.MaxIdleConnsPerHost, tr.DisableKeepAlives)
	}
}
