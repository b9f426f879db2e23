package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// productionVars are the variables Caddyfile.production takes from the
// environment when it is adapted (require_env), in the order it names them.
var productionVars = []string{
	"HELSEGATE_SITE", "HELSEGATE_PUBLIC_ORIGIN", "HELSEGATE_ENVIRONMENT",
	"HELSEID_ISSUER", "KJ_UPSTREAM", "MEMBERSHIP_REGISTRY",
}

// productionEnv is this process's environment without any variable the
// production config reads, plus set; HOME and the XDG directories point at dir.
func productionEnv(dir string, set map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "HELSEGATE_") || strings.HasPrefix(name, "HELSEID_") ||
			name == "KJ_UPSTREAM" || strings.HasPrefix(name, "MEMBERSHIP_") || name == "REDIS_URL" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env
}

// without returns a copy of vars without the named ones.
func without(vars map[string]string, names ...string) map[string]string {
	out := make(map[string]string, len(vars))
	for k, v := range vars {
		out[k] = v
	}
	for _, n := range names {
		delete(out, n)
	}
	return out
}

func productionConfig(t *testing.T) (path string, content string) {
	t.Helper()
	path, err := filepath.Abs("../Caddyfile.production")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, string(b)
}

func runBin(t *testing.T, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("helsegate %s did not finish in 30 s\n%s", strings.Join(args, " "), out)
	}
	return string(out), err
}

// Caddyfile.production has no defaults: with every variable it validates, and
// without any one of them (unset or empty) validate fails at require_env's
// line, naming it. REDIS_URL, read at Provision, fails naming itself too.
func TestProductionConfigValidate(t *testing.T) {
	path, content := productionConfig(t)
	dir := t.TempDir()
	vars := map[string]string{
		"HELSEGATE_SITE":          "http://127.0.0.1:" + strings.Split(mustFreePort(), ":")[1],
		"HELSEGATE_PUBLIC_ORIGIN": "https://api.example.no",
		"HELSEGATE_ENVIRONMENT":   "production",
		"HELSEID_ISSUER":          "https://helseid-sts.nhn.no",
		"KJ_UPSTREAM":             "127.0.0.1:9",
		"MEMBERSHIP_REGISTRY":     "https://registry.invalid",
		"MEMBERSHIP_TOKEN":        "t",
		"REDIS_URL":               "none",
	}
	validate := func(set map[string]string) (string, error) {
		return runBin(t, dir, productionEnv(dir, set), "validate", "--config", path, "--adapter", "caddyfile")
	}
	if out, err := validate(vars); err != nil {
		t.Fatalf("every variable set: %v\n%s", err, out)
	}
	at := "Caddyfile.production:" + strconv.Itoa(lineOf(content, "\trequire_env "))
	for _, name := range productionVars {
		for _, how := range []string{"unset", "empty"} {
			t.Run(name+" "+how, func(t *testing.T) {
				set := without(vars, name)
				if how == "empty" {
					set[name] = ""
				}
				out, err := validate(set)
				if err == nil || !strings.Contains(out, "variable "+name+" is not set") || !strings.Contains(out, at) {
					t.Errorf("validate: %v, want an error naming %s at %s:\n%s", err, name, at, out)
				}
			})
		}
	}
	t.Run("REDIS_URL unset", func(t *testing.T) {
		out, err := validate(without(vars, "REDIS_URL"))
		if err == nil || !strings.Contains(out, "{env.REDIS_URL} is empty") {
			t.Errorf("validate: %v, want an error naming REDIS_URL:\n%s", err, out)
		}
	})
	t.Run("all missing are named at once", func(t *testing.T) {
		out, err := validate(nil)
		if err == nil || !strings.Contains(out, strings.Join(productionVars, ", ")) {
			t.Errorf("validate: %v, want every variable named:\n%s", err, out)
		}
	})
}

// A gateway running Caddyfile.production keeps its config when a reload
// lacks a variable: `helsegate reload` from a shell without it fails naming
// it (adapted in the CLI, nothing is posted), and POST /load of the Caddyfile
// to a server whose own environment lacks REDIS_URL fails naming it. The old
// config goes on serving.
func TestProductionConfigReload(t *testing.T) {
	path, _ := productionConfig(t)
	dir := t.TempDir()
	up := newUpstream(t)
	admin := mustFreePort()
	site := mustFreePort()
	vars := map[string]string{
		"HELSEGATE_SITE":          "http://" + site,
		"HELSEGATE_PUBLIC_ORIGIN": "http://" + site,
		"HELSEGATE_ENVIRONMENT":   "test",
		"HELSEID_ISSUER":          sharedSim.Issuer(),
		"KJ_UPSTREAM":             up.URL(),
		"MEMBERSHIP_REGISTRY":     "http://127.0.0.1:9",
		"MEMBERSHIP_TOKEN":        "t",
		"REDIS_URL":               "none",
		"HELSEGATE_ADMIN":         admin,
		"HELSEGATE_BIND":          "127.0.0.1",
	}
	startProcess(t, dir, productionEnv(dir, vars), admin, site, "run", "--config", path, "--adapter", "caddyfile")

	metadataURL := "http://" + site + "/.well-known/oauth-protected-resource/kjernejournal"
	serving := func(t *testing.T) {
		t.Helper()
		r := send(t, http.MethodGet, metadataURL, nil)
		if r.status != http.StatusOK || !strings.Contains(r.body, sharedSim.Issuer()) {
			t.Errorf("the running config stopped serving: %d %s", r.status, r.body)
		}
	}
	serving(t)
	before := getConfig(t, admin)

	// The image's health check: the binary asks the admin endpoint.
	if out, err := runBin(t, dir, productionEnv(dir, map[string]string{"HELSEGATE_ADMIN": admin}), "health"); err != nil ||
		!strings.Contains(out, "200 OK") || !strings.Contains(out, `"status"`) {
		t.Errorf("helsegate health: %v\n%s", err, out)
	}
	if out, err := runBin(t, dir, productionEnv(dir, nil), "health", "--address", mustFreePort()); err == nil {
		t.Errorf("helsegate health with nothing listening: exit 0\n%s", out)
	}

	for _, name := range productionVars {
		t.Run("reload without "+name, func(t *testing.T) {
			out, err := runBin(t, dir, productionEnv(dir, without(vars, name)),
				"reload", "--config", path, "--adapter", "caddyfile", "--address", admin)
			if err == nil || !strings.Contains(out, "variable "+name+" is not set") {
				t.Errorf("reload: %v, want an error naming %s:\n%s", err, name, out)
			}
			if after := getConfig(t, admin); !bytes.Equal(before, after) {
				t.Errorf("the config changed after a failed reload:\nbefore %s\nafter  %s", before, after)
			}
			serving(t)
		})
	}
	t.Run("reload with every variable", func(t *testing.T) {
		// REDIS_URL is the server's, read at Provision: the reloading shell
		// need not have it.
		if out, err := runBin(t, dir, productionEnv(dir, without(vars, "REDIS_URL")),
			"reload", "--config", path, "--adapter", "caddyfile", "--address", admin, "--force"); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		serving(t)
	})

	t.Run("POST /load to a server without REDIS_URL", func(t *testing.T) {
		// A second gateway whose own environment lacks REDIS_URL, running a
		// config that does not need it.
		dir2 := t.TempDir()
		admin2, site2 := mustFreePort(), mustFreePort()
		initial := filepath.Join(dir2, "Caddyfile")
		if err := os.WriteFile(initial, []byte(fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n}\nhttp://%s {\n\trespond \"old\"\n}\n", admin2, site2)), 0o600); err != nil {
			t.Fatal(err)
		}
		vars2 := without(vars, "REDIS_URL")
		vars2["HELSEGATE_ADMIN"], vars2["HELSEGATE_SITE"] = admin2, "http://"+site2
		startProcess(t, dir2, productionEnv(dir2, vars2), admin2, site2, "run", "--config", initial, "--adapter", "caddyfile")
		before2 := getConfig(t, admin2)
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+admin2+"/load", bytes.NewReader(body))
		req.Header.Set("Content-Type", "text/caddyfile")
		resp, err := adminClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || !strings.Contains(string(msg), "{env.REDIS_URL} is empty") {
			t.Errorf("POST /load: %s %s, want an error naming REDIS_URL", resp.Status, msg)
		}
		if after := getConfig(t, admin2); !bytes.Equal(before2, after) {
			t.Errorf("the config changed after a failed /load:\nbefore %s\nafter  %s", before2, after)
		}
		if r := send(t, http.MethodGet, "http://"+site2+"/", nil); r.body != "old" {
			t.Errorf("the old config stopped serving: %d %q", r.status, r.body)
		}
	})
}

func getConfig(t *testing.T, admin string) []byte {
	t.Helper()
	resp, err := adminClient.Get("http://" + admin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /config/: %s %s", resp.Status, b)
	}
	return b
}

// startProcess runs the binary with args until the test ends, waiting until
// its admin endpoint answers and its site accepts connections.
func startProcess(t *testing.T, dir string, env []string, admin, site string, args ...string) *gateway {
	t.Helper()
	g := &gateway{admin: admin, addrs: []string{site},
		errPath: filepath.Join(dir, "stderr-"+strings.ReplaceAll(admin, ":", "_")+".log")}
	var err error
	g.proc, err = gatewayproc.Start(context.Background(), gatewayproc.Options{
		Name: "gateway", Bin: binPath, Args: args, Dir: dir, Environ: env, OutPath: g.errPath,
		Admin: admin, Addrs: g.addrs, ReadyTimeout: gatewayReady,
	})
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	t.Cleanup(g.stop)
	g.logOnFailure(t)
	return g
}

// helsegate dev runs Caddyfile.production too: the defaults are dev's (it
// sets every variable the file requires, HELSEGATE_ENVIRONMENT=test among
// them), not the file's.
func TestDevProductionConfig(t *testing.T) {
	d := startDevConfig(t, "Caddyfile.production", "HELSEGATE_ENVIRONMENT=")
	if out, got, code := d.call(t); code != 0 || len(got) != 1 || got[0] != "200" {
		t.Errorf("helsegate call through dev on Caddyfile.production: exit %d, statuses %v\n%s", code, got, out)
	}
}
