package dist

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestAlertRules runs promtool on the alert rules: `check rules` (syntax,
// PromQL, templates) and `test rules` (each alert fires on its failure and
// stays quiet on a healthy gateway). Skipped when promtool is not on PATH:
// Debian's prometheus package brings it, and .ci/run installs it.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
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
