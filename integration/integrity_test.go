package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// Request integrity: the upstream gets the resource the proof covered and
// the identity the gateway set, nothing a client slipped in or out.

// recorder is an upstream that reads the whole body and remembers the last
// request's path as sent, headers, trailers and body.
type recorder struct {
	mu      sync.Mutex
	hits    int
	uri     string
	path    string
	header  http.Header
	trailer http.Header
	body    string
}

func newRecorder(t *testing.T) (*recorder, string) {
	t.Helper()
	rec := &recorder{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.hits++
		rec.uri, rec.path = r.RequestURI, r.URL.EscapedPath()
		rec.header, rec.trailer, rec.body = r.Header.Clone(), r.Trailer.Clone(), string(body)
		rec.mu.Unlock()
		_, _ = io.WriteString(w, "upstream ok")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return rec, "http://" + ln.Addr().String()
}

func (r *recorder) last() (hits int, uri, path string, header, trailer http.Header, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits, r.uri, r.path, r.header.Clone(), r.trailer.Clone(), r.body
}

// integrityGateway is one site: /kj/* under handle_path and everything else
// under handle, both with helseid and a membership file authorizing
// orgParent, proxied to a recorder; and a second site whose error routes
// answer with the helseid placeholders.
func integrityGateway(t *testing.T) (*gateway, *recorder) {
	t.Helper()
	rec, upURL := newRecorder(t)
	file := opsMembershipFile(t, orgParent)
	iss := sharedSim.Issuer()
	member := "membership " + opsService + " {\n\tfile " + file + "\n}"
	g := startGateway(t, 2, func(addrs []string) string {
		route := func(dir, matcher string) string {
			return fmt.Sprintf("%s %s{\n%s\treverse_proxy %s\n}\n", dir, matcher, indent(helseid(iss, member)), upURL)
		}
		site0 := route("handle_path", "/kj/* ") + route("handle", "")
		site1 := helseid(iss, member) + "reverse_proxy " + upURL + "\n" +
			"handle_errors {\n\trespond \"{err.status_code} error={http.helseid.error} reason={http.helseid.reason}\" {err.status_code}\n}\n"
		return fmt.Sprintf("http://%s {\n%s}\n\nhttp://%s {\n%s}\n", addrs[0], indent(site0), addrs[1], indent(site1))
	})
	return g, rec
}

// userToken is a user token naming every identity the gateway sets.
func userToken(t *testing.T, c *caller) string {
	return c.token(t, helseidsim.TokenSpec{OrgChild: orgChild, OrgSupplier: orgSupp, PID: "17056600574", SecurityLevel: "4", HPRNumber: "431001110"})
}

// rawExchange writes req as is on a new connection to addr and reads one
// response.
func rawExchange(t *testing.T, addr, req string) reply {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// wantIdentity is the identity headers the upstream must get for userToken.
var wantIdentity = map[string]string{
	"X-Helseid-Org-Parent":     orgParent,
	"X-Helseid-Org-Child":      orgChild,
	"X-Helseid-Org-Supplier":   orgSupp,
	"X-Helseid-Client-Id":      helseidsim.DefaultClientID,
	"X-Helseid-Token-Kind":     "user",
	"X-Helseid-Security-Level": "4",
	"X-Helseid-Hpr-Number":     "431001110",
	"X-Helseid-Membership":     opsService,
}

// A Connection header naming identity headers must not make reverse_proxy
// drop them as hop-by-hop after the handler set them.
func TestConnectionCannotDropIdentity(t *testing.T) {
	g, rec := integrityGateway(t)
	c := newCaller(t, sharedSim)
	names := []string{"X-Helseid-Dpop-Jkt", "X-Helseid-Purpose-Of-Use", "X-Helseid-Legal-Entity"}
	for name := range wantIdentity {
		names = append(names, name)
	}
	conns := append([]string(nil), names...) // each alone
	conns = append(conns,
		strings.Join(names, ", "),
		"keep-alive, "+strings.ToLower(strings.Join(names, ",")),
		strings.ReplaceAll(strings.Join(names, " , "), "-", "_"),
	)
	for _, conn := range conns {
		rec.mu.Lock()
		rec.hits = 0
		rec.mu.Unlock()
		tok := userToken(t, c)
		url := g.url(0, "/api/patient")
		proof := c.proof(t, "GET", url, tok, dpopclient.ProofOptions{})
		r := rawExchange(t, g.addrs[0], "GET /api/patient HTTP/1.1\r\nHost: "+g.addrs[0]+"\r\n"+
			"Authorization: DPoP "+tok+"\r\nDPoP: "+proof+"\r\nConnection: "+conn+"\r\n\r\n")
		expectOK(t, r)
		hits, _, _, hdr, _, _ := rec.last()
		if hits != 1 {
			t.Fatalf("upstream hits %d, want 1", hits)
		}
		for name, want := range wantIdentity {
			if got := hdr.Values(name); len(got) != 1 || got[0] != want {
				t.Errorf("Connection: %s: upstream %s = %q, want %q", conn, name, got, want)
			}
		}
		if hdr.Get("X-Helseid-Dpop-Jkt") != c.key.Thumbprint() {
			t.Errorf("Connection: %s: upstream X-Helseid-Dpop-Jkt = %q", conn, hdr.Get("X-Helseid-Dpop-Jkt"))
		}
	}
}

// Identity headers sent as request trailers, declared or not, never reach
// the upstream; other trailers do.
func TestTrailersCannotCarryIdentity(t *testing.T) {
	g, rec := integrityGateway(t)
	c := newCaller(t, sharedSim)
	for _, declared := range []string{
		"X-Checksum, X-Helseid-Org-Parent, X-Helseid-Hpr-Number, x_helseid_org_child, X-Helseid-Purpose-Of-Use, X-Helseid-Legal-Entity",
		"X-Checksum", // the identity trailers come undeclared
	} {
		tok := c.token(t, helseidsim.TokenSpec{})
		url := g.url(0, "/api/upload")
		proof := c.proof(t, "POST", url, tok, dpopclient.ProofOptions{})
		r := rawExchange(t, g.addrs[0], "POST /api/upload HTTP/1.1\r\nHost: "+g.addrs[0]+"\r\n"+
			"Authorization: DPoP "+tok+"\r\nDPoP: "+proof+"\r\nContent-Type: text/plain\r\n"+
			"Transfer-Encoding: chunked\r\nTrailer: "+declared+"\r\nConnection: close\r\n\r\n"+
			"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Helseid-Org-Parent: 999999999\r\nX-Helseid-Hpr-Number: 1\r\nx_helseid_org_child: 2\r\n"+
			"X-Helseid-Purpose-Of-Use: BTG\r\nX-Helseid-Legal-Entity: 999999999\r\n\r\n")
		expectOK(t, r)
		hits, _, _, hdr, trailer, body := rec.last()
		if hits == 0 || body != "hello" {
			t.Fatalf("upstream hits %d body %q", hits, body)
		}
		if hdr.Get("X-Helseid-Org-Parent") != orgParent {
			t.Errorf("upstream X-Helseid-Org-Parent header %q", hdr.Values("X-Helseid-Org-Parent"))
		}
		for name := range trailer {
			if hasPrefixFold(strings.ReplaceAll(name, "_", "-"), "x-helseid-") {
				t.Errorf("Trailer: %s: the upstream got the trailer %s: %q", declared, name, trailer[name])
			}
		}
		if trailer.Get("X-Checksum") != "abc" {
			t.Errorf("Trailer: %s: the upstream lost the X-Checksum trailer: %v", declared, trailer)
		}
	}
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// The resource the proof covers is the resource the upstream gets: a path
// whose dot segments, encoded dots or slashes, backslashes or empty segments
// RFC 3986 normalization and Caddy's rewriting (handle_path) could read
// differently is refused with 400 invalid_request, whatever htu says.
func TestPathAcrossHandlePath(t *testing.T) {
	g, rec := integrityGateway(t)
	c := newCaller(t, sharedSim)

	// An ordinary path: the upstream gets the proof's path without the prefix.
	tok := c.token(t, helseidsim.TokenSpec{})
	u := g.url(0, "/kj/api/patient")
	expectOK(t, send(t, "GET", u+"?x=1", dpopHeaders(tok, c.proof(t, "GET", u, tok, dpopclient.ProofOptions{}))))
	if _, _, path, _, _, _ := rec.last(); path != "/api/patient" {
		t.Fatalf("upstream path %q, want /api/patient", path)
	}

	for _, p := range []string{
		"/kj/%2e%2e/kj/api/patient",
		"/kj/%2E%2E/kj/api/patient",
		"/kj/../kj/api/patient",
		"/kj/./api/patient",
		"/kj/%2e/api/patient",
		"/kj/api/x/../patient",
		"/kj/api/x/%2e%2e/patient",
		"/kj/api/.%2e/patient",
		"/kj//api/patient",
		"/kj/api//patient",
		"/kj/api%2Fpatient",
		"/kj/api%2fpatient",
		"/kj%2Fapi/patient",
		"/kj/api%5Cpatient",
		"/api/../kj/api/patient",
		"/api/./patient",
		"//kj/api/patient",
	} {
		t.Run(strings.ReplaceAll(p, "/", "|"), func(t *testing.T) {
			rec.mu.Lock()
			rec.hits = 0
			rec.mu.Unlock()
			tok := c.token(t, helseidsim.TokenSpec{})
			// The proof names the URI as the client sent it; NormalizeHTU
			// makes it match the request's own normal form.
			proof := c.proof(t, "GET", g.url(0, p), tok, dpopclient.ProofOptions{})
			r := rawExchange(t, g.addrs[0], "GET "+p+" HTTP/1.1\r\nHost: "+g.addrs[0]+"\r\n"+
				"Authorization: DPoP "+tok+"\r\nDPoP: "+proof+"\r\nConnection: close\r\n\r\n")
			if r.status == http.StatusOK {
				_, uri, _, _, _, _ := rec.last()
				t.Fatalf("GET %s passed; the upstream got %s", p, uri)
			}
			if r.status == http.StatusBadRequest && r.body == "" {
				return // refused by Go's or Caddy's own parser
			}
			expectProblem(t, r, http.StatusBadRequest, "invalid_request")
			if hits, _, _, _, _, _ := rec.last(); hits != 0 {
				t.Errorf("the upstream was called")
			}
			g.expectReason(t, "deny", "path_ambiguous")
		})
	}
}

// Every spelling of access_token in the query is refused, and so is a
// form-encoded body carrying one (RFC 6750 §2.2, §2.3); a form body without
// one reaches the upstream whole.
func TestTokenInQueryOrFormRefused(t *testing.T) {
	g, rec := integrityGateway(t)
	c := newCaller(t, sharedSim)
	for _, q := range []string{
		"access_token=x", "a=1&access_token=x", "access%5Ftoken=x", "access%5ftoken=x",
		"%61ccess_token=x", "%61%63%63%65%73%73%5f%74%6f%6b%65%6e=x", "a=1;access_token=x",
		"a=1;access%5Ftoken=x", "access_token", "access+token=&access_token=",
	} {
		tok := c.token(t, helseidsim.TokenSpec{})
		u := g.url(0, "/api/patient")
		r := send(t, "GET", u+"?"+q, dpopHeaders(tok, c.proof(t, "GET", u, tok, dpopclient.ProofOptions{})))
		if r.status != http.StatusBadRequest {
			t.Errorf("?%s: status %d, want 400: %s", q, r.status, r)
			continue
		}
		expectProblem(t, r, http.StatusBadRequest, "invalid_request")
		g.expectReason(t, "deny", "token_in_query")
	}

	post := func(ct, body string) reply {
		tok := c.token(t, helseidsim.TokenSpec{})
		u := g.url(0, "/api/form")
		h := dpopHeaders(tok, c.proof(t, "POST", u, tok, dpopclient.ProofOptions{}))
		req, err := http.NewRequest("POST", u, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", ct)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}
	}
	for _, body := range []string{"access_token=abc", "a=1&access_token=abc", "a=1&access%5Ftoken=abc", "a=1;%61ccess_token=abc"} {
		for _, ct := range []string{"application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8"} {
			r := post(ct, body)
			if r.status != http.StatusBadRequest {
				t.Errorf("form %q (%s): status %d, want 400: %s", body, ct, r.status, r)
				continue
			}
			expectProblem(t, r, http.StatusBadRequest, "invalid_request")
			g.expectReason(t, "deny", "token_in_body")
		}
	}
	body := "a=1&b=" + strings.Repeat("x", 100000) + "&access=token"
	expectOK(t, post("application/x-www-form-urlencoded", body))
	if _, _, _, _, _, got := rec.last(); got != body {
		t.Errorf("the upstream got a form body of %d bytes, want %d", len(got), len(body))
	}
	// Other media types are not read: a JSON body naming access_token passes.
	expectOK(t, post("application/json", `{"access_token":"not ours to judge"}`))
}

// In handle_errors, {http.helseid.error} and {http.helseid.reason} say why
// the request was refused.
func TestErrorRoutePlaceholders(t *testing.T) {
	g, _ := integrityGateway(t)
	c := newCaller(t, sharedSim)
	u := g.url(1, "/api/patient")
	r := send(t, "GET", u, nil)
	if r.status != 401 || r.body != "401 error=unauthorized reason=no_credentials" {
		t.Errorf("no credentials: %s", r)
	}
	tok := c.token(t, helseidsim.TokenSpec{})
	r = send(t, "GET", u, dpopHeaders(tok, c.proof(t, "GET", g.url(1, "/other"), tok, dpopclient.ProofOptions{})))
	if r.status != 401 || r.body != "401 error=invalid_dpop_proof reason=proof_htu" {
		t.Errorf("bad htu: %s", r)
	}
	tok = c.token(t, helseidsim.TokenSpec{OrgParent: orgChild})
	r = send(t, "GET", u, dpopHeaders(tok, c.proof(t, "GET", u, tok, dpopclient.ProofOptions{})))
	if r.status != 403 || r.body != "403 error=not_member reason=not_member" {
		t.Errorf("not a member: %s", r)
	}
	r = send(t, "GET", u+"?access%5Ftoken="+url.QueryEscape(tok), nil)
	if r.status != 400 || r.body != "400 error=invalid_request reason=token_in_query" {
		t.Errorf("token in the query: %s", r)
	}
}

// exampleGW is `helsegate run` on Caddyfile.example unchanged, its
// environment pointing at the shared simulator, a registry simulator
// authorizing orgParent for kjernejournal and a recorder. Its access log
// (stdout) and default log (stderr) are kept apart.
type exampleGW struct {
	addr           string
	rec            *recorder
	stdout, stderr *devOutput
}

func startExample(t *testing.T, env ...string) *exampleGW {
	t.Helper()
	rec, upURL := newRecorder(t)
	token := "it-registry-" + randHex(8)
	reg := startRegistry(t, registrysim.Options{Token: token, Members: []authz.Authorization{active(orgParent)}})
	example, err := filepath.Abs("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	e := &exampleGW{addr: mustFreePort(), rec: rec, stdout: &devOutput{}, stderr: &devOutput{}}
	admin := mustFreePort()
	dir := t.TempDir()
	cmd := exec.Command(binPath, "run", "--config", example, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = environ(append([]string{
		"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir,
		"HELSEGATE_SITE=http://" + e.addr, "HELSEGATE_PUBLIC_ORIGIN=http://" + e.addr,
		"HELSEGATE_ADMIN=" + admin, "HELSEGATE_BIND=127.0.0.1",
		"HELSEID_ISSUER=" + sharedSim.Issuer(), "KJ_UPSTREAM=" + upURL,
		"MEMBERSHIP_REGISTRY=" + reg.URL(), "MEMBERSHIP_TOKEN=" + token, "REDIS_URL=none",
	}, env...)...)
	cmd.Stdout, cmd.Stderr = e.stdout, e.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", e.stdout, e.stderr)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + e.addr + "/kjernejournal/api/patient")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway on Caddyfile.example did not come up: %v\n%s", err, e.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// At DEBUG, on Caddyfile.example's log config: no log stream (the access
// log on stdout, Caddy's default log with the audit entries on stderr)
// carries a token in any spelling, a proof, the pid, or the HPR number
// outside the audit entries, whatever the request.
func TestExampleLogsHoldNoSecrets(t *testing.T) {
	const (
		pid = "17056600574"
		hpr = "431001110"
	)
	e := startExample(t, "HELSEGATE_LOG_LEVEL=DEBUG")
	c := newCaller(t, sharedSim)
	base := "http://" + e.addr + "/kjernejournal/api/patient"
	var secrets []string
	user := func() string {
		tok := c.token(t, helseidsim.TokenSpec{OrgChild: orgChild, PID: pid, SecurityLevel: "4", HPRNumber: hpr})
		secrets = append(secrets, tok, strings.Split(tok, ".")[1], strings.Split(tok, ".")[2])
		return tok
	}
	proof := func(method, htu, tok string) string {
		p := c.proof(t, method, htu, tok, dpopclient.ProofOptions{})
		secrets = append(secrets, p, strings.Split(p, ".")[2])
		return p
	}
	tok := user()
	expectOK(t, send(t, "GET", base+"?x=1", dpopHeaders(tok, proof("GET", base, tok))))
	tok = user()
	if r := send(t, "GET", base, dpopHeaders(tok, proof("GET", base+"/other", tok))); r.status != 401 {
		t.Fatalf("bad htu: %s", r)
	}
	for _, q := range []string{"access_token=", "access%5Ftoken=", "%61ccess_token=", "a=1;access_token="} {
		tok = user()
		if r := send(t, "GET", base+"?"+q+tok, dpopHeaders(tok, proof("GET", base, tok))); r.status != 400 {
			t.Fatalf("?%s: %s", q, r)
		}
		tok = user()
		if r := send(t, "GET", base+"?"+q+tok, nil); r.status != 400 {
			t.Fatalf("?%s without credentials: %s", q, r)
		}
	}
	// The absolute form of the request target, which the log filter parses another way.
	tok = user()
	if r := rawExchange(t, e.addr, "GET "+base+"?access_token="+tok+" HTTP/1.1\r\nHost: "+e.addr+"\r\nConnection: close\r\n\r\n"); r.status != 400 {
		t.Fatalf("absolute form: %s", r)
	}
	// The access line is written after the response: wait until the last
	// lines have come through the pipes.
	settled := func() bool {
		n := 0
		for _, out := range []*devOutput{e.stdout, e.stderr} {
			for line := range strings.SplitSeq(out.String(), "\n") {
				if strings.Contains(line, `"logger":"http.log.access`) || strings.Contains(line, `"logger":"http.handlers.helseid.audit"`) {
					n++
				}
			}
		}
		return n >= 24
	}
	for deadline := time.Now().Add(10 * time.Second); !settled() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}

	var access, audits, proxyDebug int
	for stream, out := range map[string]*devOutput{"stdout": e.stdout, "stderr": e.stderr} {
		for i, line := range strings.Split(out.String(), "\n") {
			var entry map[string]any
			_ = json.Unmarshal([]byte(line), &entry)
			logger, _ := entry["logger"].(string)
			switch {
			case strings.HasPrefix(logger, "http.log.access"):
				access++
			case logger == "http.handlers.helseid.audit":
				audits++
			case logger == "http.handlers.reverse_proxy" && entry["level"] == "debug":
				proxyDebug++
			}
			for _, s := range secrets {
				if strings.Contains(line, s) {
					t.Errorf("%s line %d carries a token or a proof: %.400s", stream, i+1, line)
					break
				}
			}
			if strings.Contains(line, pid) {
				t.Errorf("%s line %d carries the pid: %.400s", stream, i+1, line)
			}
			if strings.Contains(line, hpr) && logger != "http.handlers.helseid.audit" {
				t.Errorf("%s line %d carries the HPR number outside the audit entry: %.400s", stream, i+1, line)
			}
		}
	}
	// One more of each: the request that saw the gateway up.
	if access != 12 || audits != 12 || proxyDebug == 0 {
		t.Errorf("%d access lines, %d audit entries, %d proxy debug lines; want 12, 12 and some: the scan saw too little", access, audits, proxyDebug)
	}
}

// Caddyfile.example cuts a connection whose request header does not
// arrive within read_header (10 s), however slowly it trickles.
func TestExampleCutsSlowHeaders(t *testing.T) {
	e := startExample(t)
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, "GET /kjernejournal/api/patient HTTP/1.1\r\nHost: "+e.addr+"\r\n"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan time.Duration, 1)
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		closed <- time.Since(start)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case d := <-closed:
			if d < 9*time.Second || d > 13*time.Second {
				t.Fatalf("the slow-header connection was cut after %s, want about 10s", d)
			}
			return
		case <-tick.C:
			if time.Since(start) > 20*time.Second {
				t.Fatal("the slow-header connection is still open after 20 s")
			}
			_, _ = io.WriteString(conn, "X-Slow: 1\r\n")
		}
	}
}
