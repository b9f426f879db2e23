package dist

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/helsegate/helsegate/caddymodule"
)

// The cross-checks of the deployment examples: every path, port and
// variable the systemd unit and the Kubernetes manifests name exists in the
// gateway (an admin route registered by caddymodule, a listener of the
// Caddyfile they ship, a variable that Caddyfile reads), and the Caddyfiles
// load with the values the examples give.

// caddyfileVars finds the variables a Caddyfile reads: {$NAME}, {$NAME:default}
// (substituted at adapt time) and {env.NAME} (read at provision).
var caddyfileVars = regexp.MustCompile(`\{\$([A-Za-z0-9_]+)(?::[^}]*)?\}|\{env\.([A-Za-z0-9_]+)\}`)

// varsRead maps each variable the Caddyfile reads to whether it has a
// default ({$NAME:default}); comment lines are left out.
func varsRead(caddyfile string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(caddyfile, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, m := range caddyfileVars.FindAllStringSubmatch(line, -1) {
			name := m[1] + m[2]
			_, seen := out[name]
			hasDefault := strings.Contains(m[0], ":")
			out[name] = hasDefault && (!seen || out[name])
		}
	}
	return out
}

// caddyEnv are variables the examples set for Caddy itself, not for the Caddyfile.
var caddyEnv = map[string]bool{"XDG_DATA_HOME": true, "XDG_CONFIG_HOME": true, "HOME": true}

// adaptAndValidate adapts a Caddyfile with env set and validates it as
// `helsegate validate` would (every module provisioned, nothing started),
// and returns the JSON config.
func adaptAndValidate(t *testing.T, name, caddyfile string, env map[string]string) map[string]any {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfgJSON, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": name})
	if err != nil {
		t.Fatalf("%s: adapting: %v", name, err)
	}
	for _, w := range warnings {
		t.Logf("%s: warning: %s", name, w.String())
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("%s: validating with the example's values: %v", name, err)
	}
	var out map[string]any
	if err := json.Unmarshal(cfgJSON, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func argAfter(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
