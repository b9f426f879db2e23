package integration

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestDevAndCall runs `helsegate dev` as a process, exactly as `make run`
// does but on free ports, and drives it with `helsegate call` through every
// scenario of `make demo`, asserting the statuses of SPEC §4.
func TestDevAndCall(t *testing.T) {
	gw, iss, reg, up := freePortNumber(t), freePortNumber(t), freePortNumber(t), freePortNumber(t)
	admin := mustFreePort()
	var out bytes.Buffer
	dev := exec.Command(binPath, "dev", "--config", "Caddyfile.example",
		"--port", gw, "--issuer-port", iss, "--registry-port", reg, "--upstream-port", up, "--admin", admin)
	dev.Dir = ".."
	dev.Env = append(os.Environ(), "REDIS_URL=")
	dev.Stdout, dev.Stderr = &out, &out
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
			t.Logf("helsegate dev output:\n%s", out.String())
		}
	})

	base := "http://localhost:" + gw + "/kjernejournal/api/patient"
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base)
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

	for _, tc := range []struct {
		name string
		args []string
		want string // the statuses, in order
	}{
		{"allowed member", nil, "200"},
		{"expired authorization", []string{"--org", "922734046"}, "403"},
		{"suspended member", []string{"--org", "994598759"}, "403"},
		{"unknown organization", []string{"--org", "889640782"}, "403"},
		{"missing scope", []string{"--scope", "openid"}, "403"},
		{"replayed proof", []string{"--replay"}, "200 401"},
		{"bearer downgrade", []string{"--bearer"}, "401"},
		{"user token", []string{"--user"}, "200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"call", "--issuer", "http://127.0.0.1:" + iss}, tc.args...)
			call := exec.Command(binPath, append(args, base)...)
			res, _ := call.CombinedOutput()
			var got []string
			for _, line := range strings.Split(string(res), "\n") {
				if strings.HasPrefix(line, "HTTP/") {
					got = append(got, strings.Fields(line)[1])
				}
			}
			if strings.Join(got, " ") != tc.want {
				t.Fatalf("statuses %q, want %q; output:\n%s", got, tc.want, res)
			}
			if tc.name == "allowed member" && !strings.Contains(string(res), `"X-Helseid-Membership":"kjernejournal"`) {
				t.Fatalf("the echo upstream did not see the identity headers:\n%s", res)
			}
		})
	}
}

// TestCaddyfileExample adapts and validates the shipped Caddyfile.example
// offline: its defaults point at hosts this machine cannot reach.
func TestCaddyfileExample(t *testing.T) {
	example, err := filepath.Abs("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"adapt", "--config", example, "--adapter", "caddyfile"},
		{"validate", "--config", example, "--adapter", "caddyfile"},
	} {
		cmd := exec.Command(binPath, args...)
		cmd.Env = append(os.Environ(), "HELSEID_ISSUER=https://helseid-sts.invalid", "MEMBERSHIP_REGISTRY=https://registry.invalid", "REDIS_URL=redis://127.0.0.1:1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helsegate %s: %v\n%s", args[0], err, out)
		}
		if args[0] == "validate" && !strings.Contains(string(out), "Valid configuration") {
			t.Fatalf("validate said:\n%s", out)
		}
	}
}
