package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
)

// newCallCmd returns a call command with flags set, writing to out.
func newCallCmd(t *testing.T, out *bytes.Buffer, flags map[string]string) *cobra.Command {
	t.Helper()
	cmd := &cobra.Command{Use: "call"}
	callFlags(cmd)
	cmd.SetOut(out)
	for k, v := range flags {
		if err := cmd.Flags().Set(k, v); err != nil {
			t.Fatalf("--%s: %v", k, err)
		}
	}
	return cmd
}

func newKeyFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key.jwk")
	if err := writeNewKey(&bytes.Buffer{}, path, "ES256"); err != nil {
		t.Fatal(err)
	}
	return path
}

// gateway answers the first use of a proof with first, and a proof it has
// seen before with replay (status and WWW-Authenticate).
func gateway(t *testing.T, first int, replay int, challenge string) string {
	t.Helper()
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		again := seen[r.Header.Get("DPoP")]
		seen[r.Header.Get("DPoP")] = true
		mu.Unlock()
		if !again {
			w.WriteHeader(first)
			return
		}
		if challenge != "" {
			w.Header().Set("WWW-Authenticate", challenge)
		}
		w.WriteHeader(replay)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/kjernejournal/api/patient"
}

func TestCallExitCode(t *testing.T) {
	key := newKeyFile(t)
	const caught = `DPoP error="invalid_dpop_proof", error_description="DPoP proof was already used", algs="ES256"`
	for _, tc := range []struct {
		name      string
		replay    bool
		first     int
		second    int
		challenge string
		want      int
	}{
		{"2xx", false, 200, 0, "", 0},
		{"refused", false, 403, 0, "", 1},
		{"replay refused as a bad proof", true, 200, 401, caught, 0},
		{"replay accepted", true, 200, 200, "", 1},
		{"replay refused for another reason", true, 200, 401, `DPoP error="invalid_token", algs="ES256"`, 1},
		{"replay refused without a challenge", true, 200, 403, "", 1},
		{"first refused, replay refused", true, 403, 401, caught, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			flags := map[string]string{"token": "header.payload.signature", "key": key, "quiet": "true"}
			if tc.replay {
				flags["replay"] = "true"
			}
			cmd := newCallCmd(t, &out, flags)
			code, err := runCall(cmd, []string{gateway(t, tc.first, tc.second, tc.challenge)})
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.want {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.want, out.String())
			}
			if n, want := strings.Count(out.String(), "HTTP/"), map[bool]int{false: 1, true: 2}[tc.replay]; n != want {
				t.Errorf("%d responses printed, want %d:\n%s", n, want, out.String())
			}
		})
	}
}

func TestCallFlagErrors(t *testing.T) {
	key := newKeyFile(t)
	for _, tc := range []struct {
		name  string
		flags map[string]string
		args  []string
	}{
		{"no URL", nil, nil},
		{"token without key", map[string]string{"token": "a.b.c"}, []string{"http://127.0.0.1:1/"}},
		{"replay and bearer", map[string]string{"replay": "true", "bearer": "true", "token": "a.b.c", "key": key}, []string{"http://127.0.0.1:1/"}},
		{"new key and URL", map[string]string{"new-key": filepath.Join(t.TempDir(), "k")}, []string{"http://127.0.0.1:1/"}},
		{"relative URL", map[string]string{"token": "a.b.c", "key": key}, []string{"/kjernejournal/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, err := runCall(newCallCmd(t, &bytes.Buffer{}, tc.flags), tc.args); err == nil || code == 0 {
				t.Errorf("code %d, err %v; want an error", code, err)
			}
		})
	}
}

func TestCallNewKey(t *testing.T) {
	for _, alg := range []string{"ES256", "PS256"} {
		t.Run(alg, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dpop.jwk")
			var out bytes.Buffer
			code, err := runCall(newCallCmd(t, &out, map[string]string{"new-key": path, "alg": alg}), nil)
			if err != nil || code != 0 {
				t.Fatalf("code %d, err %v", code, err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			key, err := dpopclient.LoadKey(data)
			if err != nil {
				t.Fatalf("LoadKey: %v", err)
			}
			if key.Alg() != alg || !strings.Contains(out.String(), key.Thumbprint()) {
				t.Errorf("alg %s, output %q; want %s and the thumbprint %s", key.Alg(), out.String(), alg, key.Thumbprint())
			}
			if strings.Contains(out.String(), `"d"`) {
				t.Errorf("the private key was printed: %q", out.String())
			}
			// Never over an existing file.
			if _, err := runCall(newCallCmd(t, &bytes.Buffer{}, map[string]string{"new-key": path}), nil); err == nil {
				t.Error("--new-key overwrote an existing file")
			}
			if again, _ := os.ReadFile(path); !bytes.Equal(again, data) {
				t.Error("the existing key file changed")
			}
		})
	}
	if _, err := runCall(newCallCmd(t, &bytes.Buffer{}, map[string]string{"new-key": filepath.Join(t.TempDir(), "k"), "alg": "HS256"}), nil); err == nil {
		t.Error("--new-key --alg HS256: no error")
	}
}

func TestChallengeError(t *testing.T) {
	for in, want := range map[string]string{
		`DPoP error="invalid_dpop_proof", error_description="x", algs="ES256"`: "invalid_dpop_proof",
		`DPoP algs="ES256"`:                       "",
		`Bearer realm="x", error="invalid_token"`: "invalid_token",
		``: "",
	} {
		if got := challengeError([]string{in}); got != want {
			t.Errorf("challengeError(%q) = %q, want %q", in, got, want)
		}
	}
}
