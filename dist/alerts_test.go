package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestAlertRules runs promtool on the alert rules: `check rules` (syntax,
// PromQL, templates) and `test rules` (each alert fires on its failure and
// stays quiet on a healthy gateway). Skipped when promtool is not on PATH
// (Debian's prometheus package brings it), except in CI, whose .ci/run
// installs it: there a missing promtool fails.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not on PATH: .ci/run installs it, so CI must run the rule tests")
		}
		t.Skip("promtool not on PATH (apt-get install prometheus)")
	}
	dir := filepath.Join("prometheus")
	for _, args := range [][]string{
		{"check", "rules", "helsegate-alerts.yml"},
		{"test", "rules", "helsegate-alerts.test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
