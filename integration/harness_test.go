package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
// Gateway processes

// gateway is one running `helsegate run` process.
type gateway struct {
	admin   string   // admin host:port
	addrs   []string // host:port of each site, in order
	dir     string
	cfgPath string
	errPath string // the process's stderr (JSON logs)
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
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

// launchGateway writes the Caddyfile and starts the binary on it, waiting
// until the admin endpoint answers and every site accepts connections.
func launchGateway(nSites int, sites siteFunc) (*gateway, error) {
	dir, err := os.MkdirTemp(workDir, "gw-")
	if err != nil {
		return nil, err
	}
	g := &gateway{dir: dir, exited: make(chan struct{})}
	g.admin = mustFreePort()
	for range nSites {
		g.addrs = append(g.addrs, mustFreePort())
	}
	g.cfgPath = filepath.Join(dir, "Caddyfile")
	g.errPath = filepath.Join(dir, "stderr.log")
	if err := os.WriteFile(g.cfgPath, []byte(g.caddyfile(sites)), 0o600); err != nil {
		return nil, err
	}
	errFile, err := os.Create(g.errPath)
	if err != nil {
		return nil, err
	}
	defer errFile.Close()
	g.cmd = exec.Command(binPath, "run", "--config", g.cfgPath, "--adapter", "caddyfile")
	g.cmd.Dir = dir
	g.cmd.Stdout = errFile
	g.cmd.Stderr = errFile
	g.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	if err := g.waitReady(15 * time.Second); err != nil {
		g.stop()
		return nil, fmt.Errorf("%w\n--- Caddyfile ---\n%s\n--- gateway log ---\n%s", err, g.caddyfile(sites), g.logTail(60))
	}
	return g, nil
}

func mustFreePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
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

func (g *gateway) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		select {
		case <-g.exited:
			return fmt.Errorf("gateway exited during start: %v", g.waitErr)
		default:
		}
		if err := g.probe(c); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("gateway not ready after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gateway) probe(c *http.Client) error {
	resp, err := c.Get("http://" + g.admin + "/config/")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin /config/: %s", resp.Status)
	}
	for _, a := range g.addrs {
		conn, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return err
		}
		conn.Close()
	}
	return nil
}

// stop kills the process and waits for it.
func (g *gateway) stop() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
	}
}

// logTail returns the last n lines of the gateway's stderr.
func (g *gateway) logTail(n int) string {
	b, err := os.ReadFile(g.errPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logEntries returns every JSON log entry written so far.
func (g *gateway) logEntries() []map[string]any {
	b, err := os.ReadFile(g.errPath)
	if err != nil {
		return nil
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

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
func (g *gateway) load(caddyfile string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+g.admin+"/load", strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %s: %s", resp.Status, body)
	}
	return nil
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
