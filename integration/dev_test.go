package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// freePortNumber returns a free loopback port as a number string.
func freePortNumber(t *testing.T) string {
	t.Helper()
	_, port, err := net.SplitHostPort(mustFreePort())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// environ is os.Environ without the variables Caddyfile.example reads, so
// that the developer's environment does not change a test, plus set.
func environ(set ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "HELSEGATE_SITE", "HELSEGATE_PUBLIC_ORIGIN", "HELSEGATE_ADMIN", "HELSEGATE_BIND",
			"HELSEGATE_ENVIRONMENT", "HELSEGATE_LOG_LEVEL", "HELSEID_ISSUER", "KJ_UPSTREAM", "PJD_UPSTREAM",
			"MEMBERSHIP_REGISTRY", "MEMBERSHIP_TOKEN", "REDIS_URL":
			continue
		}
		env = append(env, kv)
	}
	return append(env, set...)
}

// devOutput collects a process's output; safe to read while it writes.
type devOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *devOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *devOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// devProcess is a running `helsegate dev`.
type devProcess struct {
	gwPort string
	base   string // the Kjernejournal route, as the README's tour and make demo call it
	issuer string // the HelseID simulator
	admin  string // host:port of the admin endpoint
	out    *devOutput
}

// startDev runs `helsegate dev` as a process, exactly as `make run` does but
// on free ports and with env added to its environment, and waits until the
// gateway answers. It is stopped with Ctrl-C (SIGINT) at the end of the test.
func startDev(t *testing.T, env ...string) *devProcess {
	t.Helper()
	return startDevConfig(t, "Caddyfile.example", env...)
}

// startDevConfig is startDev on another Caddyfile of the repository.
func startDevConfig(t *testing.T, config string, env ...string) *devProcess {
	t.Helper()
	gw, iss, reg, up := freePortNumber(t), freePortNumber(t), freePortNumber(t), freePortNumber(t)
	d := &devProcess{
		gwPort: gw,
		base:   "http://localhost:" + gw + "/kjernejournal/api/patient",
		issuer: "http://127.0.0.1:" + iss,
		admin:  mustFreePort(),
		out:    &devOutput{},
	}
	dev := exec.Command(binPath, "dev", "--config", config,
		"--port", gw, "--issuer-port", iss, "--registry-port", reg, "--upstream-port", up, "--admin", d.admin)
	dev.Dir = ".."
	dev.Env = environ(env...)
	dev.Stdout, dev.Stderr = d.out, d.out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dev.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = dev.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = dev.Process.Kill()
		}
		if t.Failed() {
			t.Logf("helsegate dev output:\n%s", d.out.String())
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(d.base)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("helsegate dev did not come up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The help is printed after the gateway started; wait for it too.
	for !strings.Contains(d.out.String(), "Ctrl-C stops everything") {
		if time.Now().After(deadline) {
			t.Fatal("helsegate dev did not print its help")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return d
}

// call runs `helsegate call` against the dev simulator and returns its
// output, the statuses it printed and its exit code.
func (d *devProcess) call(t *testing.T, args ...string) (string, []string, int) {
	t.Helper()
	args = append([]string{"call", "--issuer", d.issuer}, args...)
	cmd := exec.Command(binPath, append(args, d.base)...)
	res, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("helsegate call: %v", err)
		}
		code = ee.ExitCode()
	}
	var got []string
	for _, line := range strings.Split(string(res), "\n") {
		if strings.HasPrefix(line, "HTTP/") {
			got = append(got, strings.Fields(line)[1])
		}
	}
	return string(res), got, code
}

// adminGet reads path from the dev gateway's admin endpoint.
func (d *devProcess) adminGet(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + d.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return body
}

// TestDevAndCall runs `helsegate dev` and drives it with `helsegate call`
// through every scenario of `make demo`, asserting the status and error code of each denial class
// and call's exit status, then runs scripts/demo itself against it.
func TestDevAndCall(t *testing.T) {
	token := "dev-registry-" + randHex(12)
	d := startDev(t, "REDIS_URL=", "MEMBERSHIP_TOKEN="+token)

	if !strings.Contains(d.out.String(), "on 127.0.0.1, in-process store") {
		t.Errorf("dev does not say it runs on loopback with the in-process store:\n%s", d.out.String())
	}

	for _, tc := range []struct {
		name string
		args []string
		want string // the statuses, in order
		exit int
	}{
		{"allowed member", nil, "200", 0},
		{"expired authorization", []string{"--org", "922734046"}, "403", 1},
		{"suspended member", []string{"--org", "994598759"}, "403", 1},
		{"unknown organization", []string{"--org", "889640782"}, "403", 1},
		{"missing scope", []string{"--scope", "openid"}, "403", 1},
		// The replay caught is the expected outcome: exit 0.
		{"replayed proof", []string{"--replay"}, "200 401", 0},
		{"bearer on a dpop-required route", []string{"--bearer"}, "401", 1},
		{"user token", []string{"--user"}, "200", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, got, exit := d.call(t, tc.args...)
			if strings.Join(got, " ") != tc.want || exit != tc.exit {
				t.Fatalf("statuses %q exit %d, want %q exit %d; output:\n%s", got, exit, tc.want, tc.exit, res)
			}
			if tc.name == "allowed member" && !strings.Contains(res, `"X-Helseid-Membership":"kjernejournal"`) {
				t.Fatalf("the echo upstream did not see the identity headers:\n%s", res)
			}
			if tc.name == "replayed proof" && !strings.Contains(res, `error="invalid_dpop_proof"`) {
				t.Fatalf("the replay was not refused as a bad proof:\n%s", res)
			}
			if tc.name == "bearer on a dpop-required route" && !strings.Contains(res, `error="invalid_token"`) {
				t.Fatalf("the Bearer was not refused with invalid_token:\n%s", res)
			}
		})
	}

	t.Run("RFC 9728 metadata of the Kjernejournal route", func(t *testing.T) {
		origin := "http://localhost:" + d.gwPort
		doc := checkRFC9728(t, origin+"/.well-known/oauth-protected-resource/kjernejournal", origin+"/kjernejournal")
		if strings.Join(doc.AuthorizationServers, " ") != d.issuer || doc.DPoPBoundAccessTokensRequired == nil || !*doc.DPoPBoundAccessTokensRequired {
			t.Errorf("document %+v", doc)
		}
		r := send(t, "GET", d.base, nil)
		if got := resourceMetadataParam(r.header.Get("WWW-Authenticate")); got != origin+"/.well-known/oauth-protected-resource/kjernejournal" {
			t.Errorf("the 401 challenge names %q", got)
		}
	})

	t.Run("RFC 9728 metadata of the attest route", func(t *testing.T) {
		origin := "http://localhost:" + d.gwPort
		doc := checkRFC9728(t, origin+"/.well-known/oauth-protected-resource/pjd", origin+"/pjd")
		if strings.Join(doc.AuthorizationDetailsTypesSupported, " ") != "nhn:tillitsrammeverk:parameters" ||
			strings.Join(doc.ScopesSupported, " ") != "nhn:kjernejournal/api nhn:kjernejournal/tillitsrammeverk" {
			t.Errorf("document %+v", doc)
		}
	})

	t.Run("listens on loopback only", func(t *testing.T) {
		var servers map[string]struct {
			Listen []string `json:"listen"`
		}
		if err := json.Unmarshal(d.adminGet(t, "/config/apps/http/servers"), &servers); err != nil {
			t.Fatal(err)
		}
		if len(servers) == 0 {
			t.Fatal("no HTTP servers in the running config")
		}
		for name, s := range servers {
			if len(s.Listen) != 1 || s.Listen[0] != "127.0.0.1:"+d.gwPort {
				t.Errorf("server %s listens on %q, want only 127.0.0.1:%s", name, s.Listen, d.gwPort)
			}
		}
		ip := nonLoopbackIP(t)
		if ip == nil {
			t.Log("this machine has no non-loopback address; checked the listen addresses only")
			return
		}
		addr := net.JoinHostPort(ip.String(), d.gwPort)
		if conn, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			conn.Close()
			t.Errorf("the dev gateway accepts connections on %s", addr)
		}
	})

	t.Run("no secret in the running config", func(t *testing.T) {
		cfg := d.adminGet(t, "/config/")
		if bytes.Contains(cfg, []byte(token)) {
			t.Error("the registry token is in the admin API's GET /config/")
		}
		if !bytes.Contains(cfg, []byte(`"registry_token":"{env.MEMBERSHIP_TOKEN}"`)) {
			t.Errorf("registry_token is not the runtime placeholder:\n%s", cfg)
		}
	})

	t.Run("token and key from files", func(t *testing.T) {
		dir := t.TempDir()
		keyFile, otherFile := filepath.Join(dir, "dpop.jwk"), filepath.Join(dir, "other.jwk")
		for _, f := range []string{keyFile, otherFile} {
			if out, err := exec.Command(binPath, "call", "--new-key", f, "--alg", "ES256").CombinedOutput(); err != nil {
				t.Fatalf("call --new-key: %v\n%s", err, out)
			}
		}
		data, err := os.ReadFile(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		key, err := dpopclient.LoadKey(data)
		if err != nil {
			t.Fatalf("the key call --new-key wrote: %v", err)
		}

		// A token bound to the saved key, got outside call, as a client
		// with its own HelseID integration would.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tok, err := key.FetchToken(ctx, d.issuer+helseidsim.TokenPath, url.Values{
			"client_id":              {helseidsim.DefaultClientID},
			"scope":                  {helseidsim.DefaultScope},
			"resource":               {helseidsim.DefaultAudience},
			helseidsim.FormOrgParent: {"917897468"},
		})
		if err != nil {
			t.Fatal(err)
		}
		res, got, exit := d.call(t, "--token", tok, "--key", keyFile)
		if strings.Join(got, " ") != "200" || exit != 0 {
			t.Fatalf("--token --key: statuses %q exit %d; output:\n%s", got, exit, res)
		}
		if !strings.Contains(res, `"X-Helseid-Dpop-Jkt":"`+key.Thumbprint()+`"`) {
			t.Errorf("the upstream did not see the saved key's thumbprint:\n%s", res)
		}
		// The same token with another key: the proof does not match cnf.jkt.
		res, got, exit = d.call(t, "--token", tok, "--key", otherFile)
		if strings.Join(got, " ") != "401" || exit != 1 || !strings.Contains(res, `error="invalid_dpop_proof"`) {
			t.Errorf("--token with the wrong --key: statuses %q exit %d; output:\n%s", got, exit, res)
		}
		// --key alone: the simulator's token is bound to the saved key.
		res, got, exit = d.call(t, "--key", keyFile)
		if strings.Join(got, " ") != "200" || exit != 0 || !strings.Contains(res, key.Thumbprint()) {
			t.Errorf("--key: statuses %q exit %d; output:\n%s", got, exit, res)
		}
	})

	t.Run("scripts/demo", func(t *testing.T) {
		demo := exec.Command("./scripts/demo")
		demo.Dir = ".."
		demo.Env = append(os.Environ(), "BIN="+binPath, "BASE="+d.base, "ISSUER="+d.issuer)
		out, err := demo.CombinedOutput()
		if err != nil {
			t.Fatalf("scripts/demo: %v\n%s", err, out)
		}
		var lines []string
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		if len(lines) < 2 || lines[len(lines)-1] != "every scenario answered as expected" {
			t.Fatalf("scripts/demo did not end with its summary:\n%s", out)
		}
		for _, line := range lines[:len(lines)-1] {
			if !strings.HasPrefix(line, "ok ") {
				t.Errorf("scripts/demo: %q does not say ok", line)
			}
		}
		if n := len(lines) - 1; n != 13 {
			t.Errorf("scripts/demo ran %d scenarios, want 13:\n%s", n, out)
		}
	})
}

// nonLoopbackIP returns an address of this machine that is not loopback
// (IPv4 preferred; IPv6 link-local addresses need a zone and are skipped),
// or nil.
func nonLoopbackIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var v6 net.IP
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() || !ipn.IP.IsGlobalUnicast() && !ipn.IP.IsPrivate() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP
		}
		if v6 == nil {
			v6 = ipn.IP
		}
	}
	return v6
}

// TestDevWithRedis runs `helsegate dev` with REDIS_URL set: it says so, and
// the replay protection goes through Redis.
func TestDevWithRedis(t *testing.T) {
	rc, _ := needRedis(t)
	d := startDev(t, "REDIS_URL=redis://"+redisAddr()+"/0")
	if !strings.Contains(d.out.String(), "on 127.0.0.1, Redis from REDIS_URL") || strings.Contains(d.out.String(), "in-process store") {
		t.Errorf("dev does not say it uses Redis:\n%s", d.out.String())
	}
	if cfg := d.adminGet(t, "/config/"); bytes.Contains(cfg, []byte(redisAddr())) {
		t.Error("the Redis URL is in the admin API's GET /config/")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before, err := redisKeys(ctx, rc, "helsegate:v1:dpop:*")
	if err != nil {
		t.Fatal(err)
	}
	res, got, exit := d.call(t, "--replay")
	if strings.Join(got, " ") != "200 401" || exit != 0 {
		t.Fatalf("--replay: statuses %q exit %d; output:\n%s", got, exit, res)
	}
	after, err := redisKeys(ctx, rc, "helsegate:v1:dpop:*")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, k := range before {
		seen[k] = true
	}
	added := 0
	for _, k := range after {
		if !seen[k] {
			added++
		}
	}
	if added == 0 {
		t.Errorf("no replay entry appeared in Redis (%d keys before, %d after)", len(before), len(after))
	}
}

// TestDevMembersStrict: a members file with a misspelled field stops dev
// with an error naming the field, instead of serving a zero-valued entry.
func TestDevMembersStrict(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "members.json")
	doc := `{"authorizations":[{"organization":"917897468","service":"kjernejournal","member":true,"stauts":"active"}]}`
	if err := os.WriteFile(bad, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := exec.Command(binPath, "dev", "--config", "Caddyfile.example", "--members", bad,
		"--port", freePortNumber(t), "--issuer-port", freePortNumber(t), "--registry-port", freePortNumber(t),
		"--upstream-port", freePortNumber(t), "--admin", mustFreePort())
	dev.Dir = ".."
	dev.Env = environ()
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = dev.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = dev.Process.Kill()
		<-done
		t.Fatalf("dev kept running with a misspelled members file:\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "stauts") {
		t.Errorf("dev with a misspelled field: err %v, want an error naming it; output:\n%s", err, out)
	}
}

// TestCaddyfileExample adapts and validates the shipped Caddyfile.example
// offline: its defaults point at hosts this machine cannot reach.
func TestCaddyfileExample(t *testing.T) {
	example, err := filepath.Abs("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"overrides", []string{"HELSEID_ISSUER=https://helseid-sts.invalid", "MEMBERSHIP_REGISTRY=https://registry.invalid",
			"MEMBERSHIP_TOKEN=t0ken", "REDIS_URL=redis://127.0.0.1:1"}},
		{"defaults, in-process store", []string{"REDIS_URL=none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{
				{"adapt", "--config", example, "--adapter", "caddyfile"},
				{"validate", "--config", example, "--adapter", "caddyfile"},
			} {
				cmd := exec.Command(binPath, args...)
				cmd.Env = environ(tc.env...)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("helsegate %s: %v\n%s", args[0], err, out)
				}
				if args[0] == "validate" && !strings.Contains(string(out), "Valid configuration") {
					t.Fatalf("validate said:\n%s", out)
				}
			}
		})
	}
}

// Without REDIS_URL, Caddyfile.example does not load: a replica missing its
// variable must not quietly run on the in-process store.
func TestCaddyfileExampleRedisURLRequired(t *testing.T) {
	cmd := exec.Command(binPath, "validate", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	cmd.Dir = ".."
	cmd.Env = environ("REDIS_URL=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "redis {env.REDIS_URL} is empty") {
		t.Fatalf("validate without REDIS_URL: %v\n%s", err, out)
	}
}

// adaptExample returns Caddyfile.example adapted to JSON with env.
func adaptExample(t *testing.T, env ...string) []byte {
	t.Helper()
	cmd := exec.Command(binPath, "adapt", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	cmd.Dir = ".."
	cmd.Env = environ(env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helsegate adapt: %v\n%s", err, stderr.String())
	}
	return stdout.Bytes()
}

// TestCaddyfileExampleSecrets: the registry token and a Redis password are
// read from the environment when the config loads, so neither is in the
// adapted JSON (what autosave.json and GET /config/ hold).
func TestCaddyfileExampleSecrets(t *testing.T) {
	token, password := "registry-"+randHex(12), "redis-"+randHex(12)
	cfg := adaptExample(t, "MEMBERSHIP_TOKEN="+token, "REDIS_URL=redis://helsegate:"+password+"@redis.internal:6380/2")
	for name, secret := range map[string]string{"MEMBERSHIP_TOKEN": token, "the Redis password": password, "the Redis URL": "redis.internal"} {
		if bytes.Contains(cfg, []byte(secret)) {
			t.Errorf("%s is in the adapted config", name)
		}
	}
	for _, want := range []string{`"registry_token":"{env.MEMBERSHIP_TOKEN}"`, `"redis":{"url":"{env.REDIS_URL}"}`} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("the adapted config lacks %s:\n%s", want, cfg)
		}
	}
}

// TestCaddyfileExampleBind: Caddyfile.example listens on every interface,
// as an operator expects, unless HELSEGATE_BIND names addresses.
func TestCaddyfileExampleBind(t *testing.T) {
	listen := func(env ...string) []string {
		t.Helper()
		var cfg struct {
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Listen []string `json:"listen"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(adaptExample(t, env...), &cfg); err != nil {
			t.Fatal(err)
		}
		var all []string
		for _, s := range cfg.Apps.HTTP.Servers {
			all = append(all, s.Listen...)
		}
		return all
	}
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"unset: every interface", nil, ":8080"},
		{"empty: every interface", []string{"HELSEGATE_BIND="}, ":8080"},
		{"loopback", []string{"HELSEGATE_BIND=127.0.0.1"}, "127.0.0.1:8080"},
		{"two addresses", []string{"HELSEGATE_BIND=127.0.0.1 [::1]"}, "127.0.0.1:8080 [::1]:8080"},
		{"production site", []string{"HELSEGATE_SITE=https://api.example.no"}, ":443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := listen(tc.env...)
			if fmt.Sprint(got) != fmt.Sprint(strings.Fields(tc.want)) {
				t.Errorf("listen %q, want %q", got, strings.Fields(tc.want))
			}
		})
	}
}
