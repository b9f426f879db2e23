package version

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"main module", debug.BuildInfo{Main: debug.Module{Path: ModulePath, Version: "v0.1.0"}}, "v0.1.0"},
		{"main module, local build", debug.BuildInfo{Main: debug.Module{Path: ModulePath, Version: "(devel)"}}, "(devel)"},
		{"dependency (xcaddy)", debug.BuildInfo{
			Main: debug.Module{Path: "caddy"},
			Deps: []*debug.Module{{Path: "github.com/caddyserver/caddy/v2", Version: "v2.11.9"}, {Path: ModulePath, Version: "v0.1.0"}},
		}, "v0.1.0"},
		{"dependency from a checkout (xcaddy --replace …=<checkout>)", debug.BuildInfo{
			Main: debug.Module{Path: "caddy"},
			Deps: []*debug.Module{{Path: ModulePath, Version: "v0.0.0-00010101000000-000000000000", Replace: &debug.Module{Path: "/src/helsegate"}}},
		}, "v0.0.0-00010101000000-000000000000 => /src/helsegate"},
		{"not in the build", debug.BuildInfo{Main: debug.Module{Path: "example.com/other", Version: "v1.0.0"}}, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fromBuildInfo(&tc.bi); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPrint(t *testing.T) {
	old := version
	version = "v9.9.9-test"
	defer func() { version = old }()
	var b bytes.Buffer
	Print(&b)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || lines[0] != "helsegate v9.9.9-test" || !strings.HasPrefix(lines[1], "caddy ") || !strings.HasPrefix(lines[2], "go go1.") {
		t.Errorf("version output:\n%s", b.String())
	}
}
