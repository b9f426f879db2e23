package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Environment pinning: with helseid_environment declared, an issuer of the
// other HelseID environment is a config error naming the file and the line
// of the issuer, found by `helsegate validate` without touching the network.
func TestValidateEnvironmentPinning(t *testing.T) {
	dir := t.TempDir()
	write := func(name, env, issuer string) (string, string) {
		content := "{\n\tadmin off\n\tauto_https off\n\thelseid_environment " + env + "\n}\n\n" +
			"http://127.0.0.1:8080 {\n\thelseid {\n\t\taudience nhn:kjernejournal\n\t\tissuer " + issuer +
			"\n\t\tscopes nhn:kjernejournal/api\n\t}\n\treverse_proxy 127.0.0.1:9\n}\n"
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path, content
	}
	for _, tc := range []struct {
		name, env, issuer, mark, msg string
	}{
		{"production names the test issuer", "production", "https://helseid-sts.test.nhn.no", "issuer https://helseid-sts.test.nhn.no", "helseid_environment is production"},
		{"production names the test token service", "production", "https://helseid-ttt.test.nhn.no", "issuer https://helseid-ttt", "helseid_environment is production"},
		{"test names the production issuer", "test", "https://helseid-sts.nhn.no", "issuer https://helseid-sts.nhn.no", "helseid_environment is test"},
		{"unknown environment", "staging", "https://helseid-sts.nhn.no", "helseid_environment staging", "production or test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, content := write(strings.ReplaceAll(tc.name, " ", "_")+".Caddyfile", tc.env, tc.issuer)
			out := validateRefuses(t, path, content)
			if !strings.Contains(out, tc.msg) {
				t.Errorf("the error does not say %q:\n%s", tc.msg, out)
			}
			if line := lineNamed(t, out, path); line != lineOf(content, tc.mark) {
				t.Errorf("the error names line %d, want %d (the line with %q):\n%s", line, lineOf(content, tc.mark), tc.mark, out)
			}
		})
	}
	for _, tc := range []struct{ env, issuer string }{
		{"production", "https://helseid-sts.nhn.no"},
		{"test", "https://helseid-sts.test.nhn.no"},
	} {
		t.Run(tc.env+" names its own issuer", func(t *testing.T) {
			path, content := write("good-"+tc.env+".Caddyfile", tc.env, tc.issuer)
			if out, err := validate(t, path); err != nil {
				t.Fatalf("validate: %v\n%s\n--- output ---\n%s", err, content, out)
			}
		})
	}
}

// Caddyfile.example declares helseid_environment from HELSEGATE_ENVIRONMENT
// (default test): production with the default, test, issuer does not load,
// production with the production issuer does.
func TestCaddyfileExampleEnvironment(t *testing.T) {
	run := func(env ...string) (string, error) {
		cmd := exec.Command(binPath, "validate", "--config", "Caddyfile.example", "--adapter", "caddyfile")
		cmd.Dir = ".."
		cmd.Env = environ(append([]string{"REDIS_URL=none"}, env...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	content, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	out, err := run("HELSEGATE_ENVIRONMENT=production")
	want := "Caddyfile.example:" + strconv.Itoa(lineOf(string(content), "issuer {$HELSEID_ISSUER"))
	if err == nil || !strings.Contains(out, "helseid_environment is production") || !strings.Contains(out, want) {
		t.Errorf("production with the default (test) issuer: %v, want an error at %s:\n%s", err, want, out)
	}
	if out, err := run("HELSEGATE_ENVIRONMENT=production", "HELSEID_ISSUER=https://helseid-sts.nhn.no"); err != nil {
		t.Errorf("production with the production issuer: %v\n%s", err, out)
	}
	if out, err := run("HELSEID_ISSUER=https://helseid-sts.nhn.no"); err == nil || !strings.Contains(out, "helseid_environment is test") {
		t.Errorf("the default (test) environment with the production issuer: %v\n%s", err, out)
	}
}
