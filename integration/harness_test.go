package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// Values every test uses.
const (
	audience  = "nhn:kjernejournal"
	scope     = "nhn:kjernejournal/api"
	orgParent = "917897468"
	orgChild  = "974600951"
	orgSupp   = "984432515"
	// defaultAlgs is the algs="…" of every DPoP challenge with the default config.
	defaultAlgs = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512"
	nonceSecret = "0123456789abcdef0123"
)

var (
	// binPath is the helsegate binary TestMain builds.
	binPath string
	// workDir holds the binary; removed after the run.
	workDir string
	// sharedSim is the simulator of every test that neither rotates its keys
	// nor takes it down.
	sharedSim *helseidsim.Server
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var err error
	workDir, err = os.MkdirTemp("", "helsegate-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := 1
	defer func() {
		if code == 0 {
			os.RemoveAll(workDir)
		} else {
			fmt.Fprintf(os.Stderr, "gateway configs and logs kept in %s\n", workDir)
		}
	}()

	// HELSEGATE_TEST_BIN runs a binary built elsewhere instead (for
	// bisecting); normally the tests build and run the module's own.
	if binPath = os.Getenv("HELSEGATE_TEST_BIN"); binPath == "" {
		binPath = filepath.Join(workDir, "helsegate")
		build := exec.Command("go", "build", "-o", binPath, "./cmd/helsegate")
		build.Dir = ".."
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building helsegate: %v\n%s", err, out)
			return 1
		}
	}

	sharedSim, err = helseidsim.Start(helseidsim.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the HelseID simulator:", err)
		return 1
	}
	defer sharedSim.Close()
	defer stopMain()

	code = m.Run()
	return code
}

// ---------------------------------------------------------------------------
// Randomness

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ---------------------------------------------------------------------------
// Recording upstream

// upstream is a stand-in API: it answers 200 "upstream ok" and remembers the
// last request it saw.
type upstream struct {
	srv *httptest.Server

	mu     sync.Mutex
	hits   int
	method string
	path   string
	header http.Header
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hits++
		u.method = r.Method
		u.path = r.URL.Path
		u.header = r.Header.Clone()
		u.mu.Unlock()
		_, _ = io.WriteString(w, "upstream ok")
	}))
	if t != nil {
		t.Cleanup(u.srv.Close)
	}
	return u
}

// URL is the upstream's base URL for reverse_proxy.
func (u *upstream) URL() string { return u.srv.URL }

// reset forgets the last request.
func (u *upstream) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.hits, u.method, u.path, u.header = 0, "", "", nil
}

// last returns the number of requests since the last reset and the last one's method, path and headers.
func (u *upstream) last() (hits int, method, path string, header http.Header) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits, u.method, u.path, u.header.Clone()
}

// ---------------------------------------------------------------------------
// Gateway processes

// gateway is one running `helsegate run` process.
type gateway struct {
	proc    *gatewayproc.Process
	admin   string   // admin host:port
	addrs   []string // host:port of each site, in order
	errPath string   // the process's stderr (JSON logs)
}

// siteFunc renders the site blocks of a Caddyfile for the gateway's site addresses.
type siteFunc func(addrs []string) string

// global renders the global options block.
func (g *gateway) global() string {
	return fmt.Sprintf(`{
	admin %s
	auto_https off
	default_bind 127.0.0.1
	log {
		output stderr
		format json
		level INFO
	}
}
`, g.admin)
}

// caddyfile renders a whole Caddyfile.
func (g *gateway) caddyfile(sites siteFunc) string {
	return g.global() + "\n" + sites(g.addrs)
}

// url returns http://<site i>/<path>.
func (g *gateway) url(i int, path string) string {
	return "http://" + g.addrs[i] + path
}

// gatewayReady bounds a gateway's start.
const gatewayReady = 15 * time.Second

// launchGateway writes the Caddyfile and starts the binary on it, waiting
// until the admin endpoint answers and every site accepts connections.
func launchGateway(nSites int, sites siteFunc) (*gateway, error) {
	dir, err := os.MkdirTemp(workDir, "gw-")
	if err != nil {
		return nil, err
	}
	g := &gateway{admin: mustFreePort(), errPath: filepath.Join(dir, "stderr.log")}
	for range nSites {
		g.addrs = append(g.addrs, mustFreePort())
	}
	cfg := g.caddyfile(sites)
	g.proc, err = gatewayproc.Start(context.Background(), gatewayproc.Options{
		Name: "gateway", Bin: binPath, Dir: dir, Caddyfile: cfg, OutPath: g.errPath,
		Admin: g.admin, Addrs: g.addrs, ReadyTimeout: gatewayReady,
	})
	if err != nil {
		return nil, fmt.Errorf("%w\n--- Caddyfile ---\n%s", err, cfg)
	}
	return g, nil
}

func mustFreePort() string {
	addr, err := gatewayproc.FreeAddr()
	if err != nil {
		panic(err)
	}
	return addr
}

// startGateway is launchGateway for one test: it fails the test when the
// gateway does not come up, stops it at the end and prints its log when the
// test failed.
func startGateway(t *testing.T, nSites int, sites siteFunc) *gateway {
	t.Helper()
	g, err := launchGateway(nSites, sites)
	if err != nil {
		t.Fatalf("starting the gateway: %v", err)
	}
	t.Cleanup(g.stop)
	g.logOnFailure(t)
	return g
}

// logOnFailure prints the tail of the gateway log if t fails.
func (g *gateway) logOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gateway log (%s), last lines:\n%s", g.errPath, g.logTail(40))
		}
	})
}

// stop stops the process (gracefully, then by force) and waits for it.
func (g *gateway) stop() { g.proc.Stop() }

// logTail returns the last n lines of the gateway's stderr.
func (g *gateway) logTail(n int) string { return g.proc.LogTail(n) }

// logEntries returns every JSON log entry written so far.
func (g *gateway) logEntries() []map[string]any { return g.proc.LogEntries() }

// lastAudit returns the last entry of the audit logger.
func (g *gateway) lastAudit() map[string]any {
	entries := g.logEntries()
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i]["logger"] == "http.handlers.helseid.audit" {
			return entries[i]
		}
	}
	return nil
}

// expectReason checks the reason code of the last audit entry.
func (g *gateway) expectReason(t *testing.T, decision, reason string) {
	t.Helper()
	e := g.lastAudit()
	if e == nil {
		t.Errorf("no audit entry in the gateway log; want decision %q reason %q", decision, reason)
		return
	}
	if e["decision"] != decision || e["reason"] != reason {
		t.Errorf("last audit entry: decision %v reason %v; want %q %q", e["decision"], e["reason"], decision, reason)
	}
}

// adminClient talks to the admin endpoint without keeping connections (the
// admin server is replaced on every config load).
var adminClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// load replaces the running config with a Caddyfile through POST /load.
func (g *gateway) load(caddyfile string) error { return g.proc.Load(caddyfile) }

// helseid renders a helseid directive for issuer with the required
// subdirectives and extra lines.
func helseid(issuer string, extra ...string) string {
	var b strings.Builder
	b.WriteString("helseid {\n")
	fmt.Fprintf(&b, "\tissuer %s\n\taudience %s\n\tscopes %s\n", issuer, audience, scope)
	for _, e := range extra {
		b.WriteString("\t" + strings.ReplaceAll(e, "\n", "\n\t") + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// indent indents every line of s by one tab.
func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "\t" + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// simpleSite is one site: helseid with extra lines, then reverse_proxy.
func simpleSite(issuer, upstreamURL string, extra ...string) siteFunc {
	return func(addrs []string) string {
		return fmt.Sprintf("http://%s {\n%s\treverse_proxy %s\n}\n", addrs[0], indent(helseid(issuer, extra...)), upstreamURL)
	}
}

// ---------------------------------------------------------------------------
// The shared gateway: one process for the tests that only read

// mainGW is the shared gateway. Site 0 routes:
//
//	/kj/*       handle_path, default helseid          (htu against the original URI)
//	/off/*      forward_token off
//	/optional/* dpop optional
//	/nonce/*    dpop_nonce
//	/user/*     token_kind user, min_security_level 4, require_hpr
//	/machine/*  token_kind machine
//	everything else: default helseid
//
// Site 1 is the default helseid with handle_errors.
type mainGW struct {
	*gateway
	up *upstream
}

var (
	mainOnce sync.Once
	mainG    *mainGW
	mainErr  error
)

func mainSites(issuer, up string) siteFunc {
	route := func(matcher, dir string, extra ...string) string {
		return fmt.Sprintf("%s %s{\n%s\treverse_proxy %s\n}\n", dir, matcher, indent(helseid(issuer, extra...)), up)
	}
	return func(addrs []string) string {
		site0 := route("/kj/* ", "handle_path") +
			route("/off/* ", "handle", "forward_token off") +
			route("/optional/* ", "handle", "dpop optional") +
			route("/nonce/* ", "handle", "dpop_nonce "+nonceSecret) +
			route("/user/* ", "handle", "token_kind user", "min_security_level 4", "require_hpr") +
			route("/machine/* ", "handle", "token_kind machine") +
			// The default route also passes two placeholders upstream.
			strings.Replace(route("", "handle"), "reverse_proxy "+up+"\n",
				"reverse_proxy "+up+" {\n\t\theader_up X-Test-User-Id {http.auth.user.id}\n\t\theader_up X-Test-Jkt {http.auth.user.jkt}\n\t}\n", 1)
		site1 := helseid(issuer) + "reverse_proxy " + up + "\n" +
			"handle_errors {\n\trespond \"custom {err.status_code}\"\n}\n"
		return fmt.Sprintf("http://%s {\n%s}\n\nhttp://%s {\n%s}\n", addrs[0], indent(site0), addrs[1], indent(site1))
	}
}

// sharedGateway returns the shared gateway, starting it on first use.
func sharedGateway(t *testing.T) *mainGW {
	t.Helper()
	mainOnce.Do(func() {
		up := newUpstream(nil)
		g, err := launchGateway(2, mainSites(sharedSim.Issuer(), up.URL()))
		if err != nil {
			up.srv.Close()
			mainErr = err
			return
		}
		mainG = &mainGW{gateway: g, up: up}
	})
	if mainErr != nil {
		t.Fatalf("starting the shared gateway: %v", mainErr)
	}
	mainG.up.reset()
	mainG.logOnFailure(t)
	return mainG
}

func stopMain() {
	if mainG != nil {
		mainG.stop()
		mainG.up.srv.Close()
	}
}

// ---------------------------------------------------------------------------
// Redis

func redisAddr() string {
	if a := os.Getenv("HELSEGATE_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// needRedis returns a client of the test Redis and a key prefix unique to
// this test, whose keys are deleted at the end. It fails the test when
// Redis does not answer.
func needRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: redisAddr()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rc.Ping(ctx).Err(); err != nil {
		rc.Close()
		t.Fatalf("Redis at %s (HELSEGATE_TEST_REDIS) does not answer: %v", redisAddr(), err)
	}
	prefix := "hg-test-" + randHex(6) + ":"
	// The replay store's epoch marker, as a store in service long before
	// the test would hold it: a key prefix used for the first time is
	// otherwise a store that may have lost its records, and refuses proofs
	// for one skew (the fault tests show that).
	if err := rc.Set(ctx, prefix+"v1:epoch", "1/0", time.Hour).Err(); err != nil {
		rc.Close()
		t.Fatalf("seeding the epoch marker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, _ := redisKeys(ctx, rc, prefix+"*")
		if len(keys) > 0 {
			rc.Del(ctx, keys...)
		}
		rc.Close()
	})
	return rc, prefix
}

func redisKeys(ctx context.Context, rc *redis.Client, pattern string) ([]string, error) {
	var keys []string
	iter := rc.Scan(ctx, 0, pattern, 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	return keys, iter.Err()
}

// ---------------------------------------------------------------------------
// Clients

// httpClient sends every request on a fresh connection: a DPoP proof must
// never be sent twice by a transport retry, and reloads close old connections.
var httpClient = &http.Client{
	Timeout:   15 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// reply is a gateway's answer.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) String() string {
	return fmt.Sprintf("%d %v %q", r.status, r.header, r.body)
}

// send sends a request with header set exactly as given (map keys are not
// canonicalized, so odd spellings reach the wire).
func send(t *testing.T, method, url string, header map[string][]string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// caller is a client with one DPoP key, getting tokens from a simulator.
type caller struct {
	sim *helseidsim.Server
	key *dpopclient.Key
}

func newCaller(t *testing.T, sim *helseidsim.Server) *caller {
	t.Helper()
	key, err := dpopclient.NewKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	return &caller{sim: sim, key: key}
}

// token mints a token bound to the caller's key (unless spec.JKT is "-",
// which mints an unbound one) for orgParent unless spec says otherwise.
func (c *caller) token(t *testing.T, spec helseidsim.TokenSpec) string {
	t.Helper()
	switch spec.JKT {
	case "":
		spec.JKT = c.key.Thumbprint()
	case "-":
		spec.JKT = ""
	}
	if spec.OrgParent == "" {
		spec.OrgParent = orgParent
	}
	tok, err := c.sim.Mint(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// proof signs a proof for method and htu bound to token.
func (c *caller) proof(t *testing.T, method, htu, token string, o dpopclient.ProofOptions) string {
	t.Helper()
	p, err := c.key.Proof(method, htu, token, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dpopHeaders returns Authorization: DPoP <token> and DPoP: <proof>.
func dpopHeaders(token, proof string) map[string][]string {
	return map[string][]string{"Authorization": {"DPoP " + token}, "DPoP": {proof}}
}

// htuOf is url without its query.
func htuOf(url string) string {
	u, _, _ := strings.Cut(url, "?")
	return u
}

// do sends method url with a fresh default token and a correct proof.
func (c *caller) do(t *testing.T, method, url string) reply {
	t.Helper()
	tok := c.token(t, helseidsim.TokenSpec{})
	return send(t, method, url, dpopHeaders(tok, c.proof(t, method, htuOf(url), tok, dpopclient.ProofOptions{})))
}

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

// randomKid is a kid shaped like HelseID's: 40 upper-case hex characters.
func randomKid() string { return strings.ToUpper(randHex(20)) }
