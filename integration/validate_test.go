package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// validate runs `helsegate validate` on a Caddyfile and returns its combined
// output and exit error.
func validate(t *testing.T, path string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Dir = filepath.Dir(path)
	cmd.Env = append(os.Environ(), "HOME="+cmd.Dir, "XDG_DATA_HOME="+cmd.Dir, "XDG_CONFIG_HOME="+cmd.Dir)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("helsegate validate did not finish in 30 s (network in Provision?)\n%s", out)
	}
	return string(out), err
}

// lineOf returns the 1-based line of the first line of content containing s.
func lineOf(content, s string) int {
	for i, l := range strings.Split(content, "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	return 0
}

// writeValidateConfig writes, as dir/name, a Caddyfile for validate: no
// admin endpoint, no automatic HTTPS, one site with a helseid block of
// helseidBody before a reverse_proxy. It returns the path and the content.
func writeValidateConfig(t *testing.T, dir, name, helseidBody string) (path, content string) {
	t.Helper()
	content = fmt.Sprintf(`{
	admin off
	auto_https off
}

http://127.0.0.1:8080 {
	helseid {
%s
	}
	reverse_proxy 127.0.0.1:9
}
`, helseidBody)
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, content
}

// validateRefuses runs `helsegate validate` on path, fails the test unless
// it exits with an error, and returns its output.
func validateRefuses(t *testing.T, path, content string) string {
	t.Helper()
	out, err := validate(t, path)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("validate succeeded (or did not run: %v) on a bad config:\n%s\n--- output ---\n%s", err, content, out)
	}
	return out
}

// lineNamed returns the line of path that validate's output names as
// path:<line>, and fails the test when it names none.
func lineNamed(t *testing.T, out, path string) int {
	t.Helper()
	m := regexp.MustCompile(regexp.QuoteMeta(path) + `:(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the error does not name the file and line (%s:<line>):\n%s", path, out)
	}
	line, _ := strconv.Atoi(m[1])
	return line
}

// Config errors name the file and the line; validate does no network I/O.
func TestValidate(t *testing.T) {
	dir := t.TempDir()
	// Nothing answers on these: an issuer that cannot resolve and a Redis
	// where nothing listens.
	const issuer = "https://helseid-sts.invalid"
	write := func(name, helseidBody string) (path, content string) {
		return writeValidateConfig(t, dir, name, helseidBody)
	}
	good := "\t\tissuer " + issuer + "\n\t\taudience nhn:kjernejournal\n\t\tscopes nhn:kjernejournal/api\n"

	bad := []struct {
		name string
		body string
		mark string // the line the error must name contains this
		msg  string // the output must contain this
	}{
		{"unknown algorithm", good + "\t\talgorithms RS256 RS257\n", "RS257", "RS257"},
		{"HMAC algorithm", good + "\t\tdpop_algorithms ES256 HS256\n", "HS256", "HS256"},
		{"alg none", good + "\t\talgorithms none\n", "algorithms none", "none"},
		{"unknown subdirective", good + "\t\tbogus_option 1\n", "bogus_option", "bogus_option"},
		{"missing issuer", "\t\taudience nhn:kjernejournal\n\t\tscopes nhn:kjernejournal/api\n", "", "issuer"},
		{"plain http issuer", "\t\tissuer http://helseid.example\n\t\taudience nhn:kjernejournal\n", "issuer http://", "https"},
		{"bad duration", good + "\t\tdpop_max_age soon\n", "dpop_max_age", "dpop_max_age"},
		{"duplicate subdirective", good + "\t\taudience nhn:other\n", "audience nhn:other", "duplicate"},
	}
	for i, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			path, content := write(fmt.Sprintf("bad%d.Caddyfile", i), tc.body)
			out := validateRefuses(t, path, content)
			if !strings.Contains(out, tc.msg) {
				t.Errorf("the error does not mention %q:\n%s", tc.msg, out)
			}
			line := lineNamed(t, out, path)
			if tc.mark != "" {
				if want := lineOf(content, tc.mark); line != want {
					t.Errorf("the error names line %d, want %d (the line with %q):\n%s", line, want, tc.mark, out)
				}
			} else if first, last := lineOf(content, "helseid {"), lineOf(content, "reverse_proxy")-1; line < first || line > last {
				t.Errorf("the error names line %d, want one of the helseid block (%d–%d):\n%s", line, first, last, out)
			}
		})
	}

	t.Run("good config, unreachable issuer and Redis", func(t *testing.T) {
		path, content := write("good.Caddyfile", good+"\t\tredis redis://127.0.0.1:1\n\t\tdpop_nonce "+nonceSecret+"\n\t\tpublic_origin https://api.example.test\n")
		start := time.Now()
		out, err := validate(t, path)
		if err != nil {
			t.Fatalf("validate failed on a good config whose issuer is unreachable: %v\n%s\n--- output ---\n%s", err, content, out)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("validate took %s: it should not touch the network", d)
		}
	})
}
