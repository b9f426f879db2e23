package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
