package dist

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// The systemd unit and its environment file in systemd/ against the gateway.

// unitFile reads a systemd unit into key -> values (a key may repeat).
func unitFile(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", path, line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

// envFile reads KEY=value lines.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=value", path, line)
		}
		out[k] = v
	}
	return out
}

func TestSystemdUnit(t *testing.T) {
	u := unitFile(t, filepath.Join("systemd", "helsegate.service"))
	one := func(k string) string {
		if len(u[k]) != 1 {
			t.Errorf("%s: want exactly one, got %q", k, u[k])
			return ""
		}
		return u[k][0]
	}
	for k, want := range map[string]string{
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "DynamicUser": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
	} {
		if got := one(k); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	if caps := one("AmbientCapabilities"); strings.TrimSpace(caps) != "CAP_NET_BIND_SERVICE" {
		t.Errorf("AmbientCapabilities=%q: want CAP_NET_BIND_SERVICE alone", caps)
	}
	if one("StateDirectory") == "" {
		t.Error("no StateDirectory")
	}
	if !strings.Contains(one("Environment"), "XDG_DATA_HOME=/var/lib/"+u["StateDirectory"][0]) {
		t.Errorf("Caddy's data (XDG_DATA_HOME) must be in the state directory: %q", u["Environment"])
	}

	// ExecStart and ExecReload: one binary, commands and flags it has, one config.
	start, reload := strings.Fields(one("ExecStart")), strings.Fields(one("ExecReload"))
	if len(start) < 2 || len(reload) < 2 {
		t.Fatalf("ExecStart %q, ExecReload %q", start, reload)
	}
	if start[0] != reload[0] || filepath.Base(start[0]) != "helsegate" {
		t.Errorf("ExecStart runs %s, ExecReload %s: want one helsegate binary", start[0], reload[0])
	}
	if start[1] != "run" || reload[1] != "reload" {
		t.Errorf("ExecStart %q / ExecReload %q: want helsegate run / helsegate reload", start[1], reload[1])
	}
	for _, cmdline := range [][]string{start, reload} {
		checkCommandFlags(t, cmdline[1], cmdline[2:])
	}
	config := argAfter(start, "--config")
	if config == "" || argAfter(reload, "--config") != config {
		t.Errorf("ExecStart --config %q, ExecReload --config %q: want one Caddyfile", config, argAfter(reload, "--config"))
	}
	if argAfter(start, "--adapter") != "caddyfile" || argAfter(reload, "--adapter") != "caddyfile" {
		t.Error("ExecStart and ExecReload must both say --adapter caddyfile")
	}

	// The environment file: the example names exactly the variables the
	// repository's Caddyfiles read, and they load with its values.
	envPath := one("EnvironmentFile")
	if !strings.HasPrefix(envPath, "/etc/helsegate/") || !strings.HasPrefix(config, "/etc/helsegate/") {
		t.Errorf("EnvironmentFile %q and --config %q: want both under /etc/helsegate (ConfigurationDirectory)", envPath, config)
	}
	env := envFile(t, filepath.Join("systemd", "helsegate.env.example"))
	readByAny := map[string]bool{}
	checked := 0
	for _, name := range []string{"Caddyfile.example", "Caddyfile.production"} {
		b, err := os.ReadFile(filepath.Join("..", name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		checked++
		for v, hasDefault := range varsRead(string(b)) {
			readByAny[v] = true
			if _, ok := env[v]; !ok && !hasDefault {
				t.Errorf("%s reads %s, with no default; helsegate.env.example does not set it", name, v)
			}
		}
		t.Run(name, func(t *testing.T) {
			adaptAndValidate(t, name, string(b), env)
		})
	}
	if checked == 0 {
		t.Fatal("no Caddyfile.example or Caddyfile.production in the repository root")
	}
	for v := range env {
		if !readByAny[v] {
			t.Errorf("helsegate.env.example sets %s; no Caddyfile of the repository reads it", v)
		}
	}
}

// checkCommandFlags checks that helsegate has the command and every --flag.
func checkCommandFlags(t *testing.T, command string, args []string) {
	t.Helper()
	c, ok := caddycmd.Commands()[command]
	if !ok {
		t.Errorf("helsegate has no %q command", command)
		return
	}
	cc := &cobra.Command{Use: command}
	if c.CobraFunc != nil {
		c.CobraFunc(cc)
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if cc.Flags().Lookup(name) == nil {
			t.Errorf("helsegate %s has no flag --%s", command, name)
		}
	}
}
