package integration

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// helsegate version prints helsegate's version (as make build sets it at link
// time) and Caddy's; list-modules --versions shows it beside helsegate's
// modules, and Caddy's beside Caddy's.
func TestVersionOutput(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "helsegate")
	const v = "v0.0.0-itest"
	build := exec.Command("go", "build", "-ldflags", "-X github.com/helsegate/helsegate/internal/version.version="+v, "-o", bin, "./cmd/helsegate")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("helsegate version: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 || lines[0] != "helsegate "+v || !regexp.MustCompile(`^caddy v2\.\d+\.\d+`).MatchString(lines[1]) {
		t.Errorf("helsegate version:\n%s\nwant helsegate %s, then caddy v2.x.y", out, v)
	}

	out, err = exec.Command(bin, "list-modules", "--versions").CombinedOutput()
	if err != nil {
		t.Fatalf("helsegate list-modules: %v\n%s", err, out)
	}
	for _, want := range []string{"\nhttp.handlers.helseid " + v + "\n", "\nadmin.api.helseid " + v + "\n", "\nhttp.handlers.reverse_proxy v2."} {
		if !strings.Contains(string(out), want) {
			t.Errorf("list-modules --versions lacks %q", strings.TrimSpace(want))
		}
	}

	// The harness's binary, built without the link-time version, still
	// names itself.
	out, err = exec.Command(binPath, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "helsegate ") {
		t.Errorf("version of a plain go build: %v\n%s", err, out)
	}
}
