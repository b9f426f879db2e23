package caddymodule

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// The ServeHTTP benchmarks measure the handler's whole cost for one allowed
// request as Caddy hands it over: a cached access token, a fresh proof (signed
// before the timer starts), the replay store, a warm in-process membership
// hit, the audit entry JSON-encoded to io.Discard, the metrics, and the
// identity headers and placeholders. The upstream is a no-op.

const benchOrg = "917897468"

// staticMembership authorizes every organization; the cache in front of it
// answers from its in-process tier once warm.
type staticMembership struct{}

func (staticMembership) Lookup(_ context.Context, service, org string) (authz.Answer, error) {
	return authz.Answer{
		Record:    &authz.Authorization{Organization: org, Service: service, Member: true, Status: "active"},
		FetchedAt: time.Now(),
		Source:    "registry",
	}, nil
}

type benchHandler struct {
	sim *helseidsim.Server
	key *dpopclient.Key
	h   *Handler
}

// newBenchHandler provisions a handler against the HelseID simulator. With
// redis set, the replay store is the Redis at 127.0.0.1:6379 (the benchmark
// is skipped when it does not answer).
func newBenchHandler(b testing.TB, alg string, mod func(*Handler), redisReplay bool) *benchHandler {
	b.Helper()
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sim.Close() })
	key, err := dpopclient.NewKey(alg)
	if err != nil {
		b.Fatal(err)
	}
	h := &Handler{
		Issuer:     sim.Issuer(),
		Audience:   "nhn:kjernejournal",
		Scopes:     []string{"nhn:kjernejournal/api"},
		DPoPMaxAge: caddy.Duration(time.Minute), // proofs are signed before the timer
	}
	if redisReplay {
		c, err := net.DialTimeout("tcp", "127.0.0.1:6379", 200*time.Millisecond)
		if err != nil {
			b.Skip("no Redis at 127.0.0.1:6379")
		}
		_ = c.Close()
		h.Redis = &cache.RedisConfig{URL: "redis://" + testRedisAddr(), KeyPrefix: seededPrefix(b, "helsegate-bench-")}
	}
	if mod != nil {
		mod(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	// The audit entry as production writes it: JSON, at Info.
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	h.audit = zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel)).Named("http.handlers.helseid.audit")
	h.logger = zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
	// A warm in-process membership hit.
	h.membership = &authz.MembershipCheck{
		Service: "kjernejournal",
		Rule:    authz.OrgParent,
		Source:  cache.NewCachedMembership(staticMembership{}, cache.MembershipCacheOptions{OnResult: getMetrics().membershipResult}),
		Clock:   authz.SystemClock,
	}
	return &benchHandler{sim: sim, key: key, h: h}
}

func (f *benchHandler) token(b testing.TB, bound bool) string {
	b.Helper()
	spec := helseidsim.TokenSpec{OrgParent: benchOrg, OrgChild: "922734046", Tenancy: "multi-tenant", Lifetime: time.Hour}
	if bound {
		spec.JKT = f.key.Thumbprint()
	}
	tok, err := f.sim.Mint(spec)
	if err != nil {
		b.Fatal(err)
	}
	return tok
}

// benchRequest builds a request the way Caddy hands it to a handler: with the
// replacer, the original request, the server and the vars in the context, and
// the headers of a typical API client.
func benchRequest(authorization, proof string) *http.Request {
	r := httptest.NewRequest("GET", "http://api.example.no/kjernejournal/v1/patient", nil)
	r.Header.Set("Accept", "application/fhir+json")
	r.Header.Set("Accept-Encoding", "gzip")
	r.Header.Set("User-Agent", "kj-client/1.0")
	r.Header.Set("Authorization", authorization)
	if proof != "" {
		r.Header.Set("DPoP", proof)
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	u := *r.URL
	ctx = context.WithValue(ctx, caddyhttp.OriginalRequestCtxKey, http.Request{Method: r.Method, RequestURI: r.RequestURI, URL: &u})
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	ctx = context.WithValue(ctx, caddyhttp.ServerCtxKey, &caddyhttp.Server{})
	return r.WithContext(ctx)
}

type nopNext struct{}

func (nopNext) ServeHTTP(http.ResponseWriter, *http.Request) error { return nil }

// nopWriter is a ResponseWriter that keeps nothing, so the benchmark
// measures the handler and not a recorder.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

// runServeHTTP serves b.N requests, the i-th with Authorization auth(i) and
// DPoP proof(i) (none when ""). Requests are built outside the timer in
// batches, so the live heap stays that of a server. Besides ns/op it reports
// cpu-ns/op: the process's user+system CPU time per request, which for the
// Redis store counts the client's work but not the wait for the answer.
func runServeHTTP(b *testing.B, h *Handler, auth, proof func(i int) string) {
	b.Helper()
	w := &nopWriter{h: http.Header{}}
	if err := h.ServeHTTP(w, benchRequest(auth(-1), proof(-1)), nopNext{}); err != nil {
		b.Fatal(err)
	}
	if w.h.Get("WWW-Authenticate") != "" {
		b.Fatalf("warm-up request denied: %s", w.h.Get("WWW-Authenticate"))
	}
	const batch = 256
	reqs := make([]*http.Request, batch)
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	var cpu time.Duration
	for done := 0; done < b.N; done += batch {
		n := min(batch, b.N-done)
		for i := range n {
			reqs[i] = benchRequest(auth(done+i), proof(done+i))
		}
		c0 := cpuTime()
		b.StartTimer()
		for _, r := range reqs[:n] {
			if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cpu += cpuTime() - c0
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	if w.h.Get("WWW-Authenticate") != "" {
		b.Fatalf("a request was denied: %s", w.h.Get("WWW-Authenticate"))
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkServeHTTPDPoP is an allowed DPoP request with a cached token, a
// fresh proof, a warm membership hit and the in-process replay store
// (local) or Redis (redis).
func BenchmarkServeHTTPDPoP(b *testing.B) {
	for _, bc := range []struct {
		name  string
		alg   string
		redis bool
	}{
		{"ES256/local", "ES256", false},
		{"ES256/redis", "ES256", true},
		{"RS256/local", "RS256", false},
		{"RS256/redis", "RS256", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newBenchHandler(b, bc.alg, nil, bc.redis)
			tok := f.token(b, true)
			proofs := make([]string, b.N+1)
			for i := range proofs {
				p, err := f.key.Proof("GET", "http://api.example.no/kjernejournal/v1/patient", tok, dpopclient.ProofOptions{})
				if err != nil {
					b.Fatal(err)
				}
				proofs[i] = p
			}
			runServeHTTP(b, f.h, func(int) string { return "DPoP " + tok }, func(i int) string { return proofs[i+1] })
		})
	}
}

// BenchmarkServeHTTPBearer is dpop optional with a reused unbound Bearer
// token and a warm membership hit.
func BenchmarkServeHTTPBearer(b *testing.B) {
	f := newBenchHandler(b, "ES256", func(h *Handler) { h.DPoP = "optional" }, false)
	tok := f.token(b, false)
	runServeHTTP(b, f.h, func(int) string { return "Bearer " + tok }, func(int) string { return "" })
}

// TestServeHTTPBearerAllocs holds an allowed request with a cached Bearer
// token to its allocations: the header map growing for the identity headers
// (3), their values, the Principal, the audit entry's fields, the context
// that carries the span, and the placeholders' provider (2). A value that
// escapes by mistake (the handler's copy of Caddy's original request, once)
// shows here.
func TestServeHTTPBearerAllocs(t *testing.T) {
	f := newBenchHandler(t, "ES256", func(h *Handler) { h.DPoP = "optional" }, false)
	tok := f.token(t, false)
	w := &nopWriter{h: http.Header{}}
	reqs := make([]*http.Request, 201)
	for i := range reqs {
		reqs[i] = benchRequest("Bearer "+tok, "")
	}
	i := 0
	n := testing.AllocsPerRun(200, func() {
		if err := f.h.ServeHTTP(w, reqs[i], nopNext{}); err != nil {
			t.Fatal(err)
		}
		i++
	})
	if w.h.Get("WWW-Authenticate") != "" {
		t.Fatalf("denied: %s", w.h.Get("WWW-Authenticate"))
	}
	if n > 9 {
		t.Fatalf("an allowed Bearer request allocates %v times, want at most 9", n)
	}
}
