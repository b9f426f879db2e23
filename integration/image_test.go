package integration

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// imageBuilder is podman, else docker, else "" (no builder on this machine).
func imageBuilder() string {
	for _, b := range []string{"podman", "docker"} {
		if p, err := exec.LookPath(b); err == nil {
			return p
		}
	}
	return ""
}

// make image builds the container image; its config runs the binary as
// 65532 with the entrypoint, ports, volumes, labels and health check the
// Containerfile declares, and the binary in it, taken out of the saved
// image, prints the version the image was built with and validates the
// image's Caddyfile. (Running containers does not work on every machine
// that can build images, so nothing here runs one.)
func TestContainerImage(t *testing.T) {
	builder := imageBuilder()
	if builder == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("neither podman nor docker is installed: .ci/run installs podman, so CI must build the image")
		}
		t.Skip("neither podman nor docker is installed: no image builder on this machine")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make image needs make")
	}
	const version = "v0.0.0-imagetest"
	image := "localhost/helsegate-test:" + randHex(6)
	start := time.Now()
	build := exec.Command("make", "image", "IMAGE="+image, "VERSION="+version, "BUILDER="+builder)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Logf("make image took %s", time.Since(start).Round(time.Second))
	t.Cleanup(func() { _ = exec.Command(builder, "rmi", "-f", image).Run() })

	t.Run("config", func(t *testing.T) {
		out, err := exec.Command(builder, "image", "inspect", image).Output()
		if err != nil {
			t.Fatalf("%s image inspect: %v", builder, err)
		}
		var inspect []struct {
			Config struct {
				User         string
				Entrypoint   []string
				Cmd          []string
				ExposedPorts map[string]struct{}
				Volumes      map[string]struct{}
				Labels       map[string]string
				Env          []string
				Healthcheck  *struct{ Test []string }
			}
			Healthcheck *struct{ Test []string } // podman's place for it
		}
		if err := json.Unmarshal(out, &inspect); err != nil || len(inspect) != 1 {
			t.Fatalf("inspect: %v\n%s", err, out)
		}
		c := inspect[0].Config
		if c.User != "65532:65532" {
			t.Errorf("user %q, want 65532:65532", c.User)
		}
		if !reflect.DeepEqual(c.Entrypoint, []string{"/usr/bin/helsegate"}) ||
			!reflect.DeepEqual(c.Cmd, []string{"run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"}) {
			t.Errorf("entrypoint %q, cmd %q", c.Entrypoint, c.Cmd)
		}
		if got := keys(c.ExposedPorts); !reflect.DeepEqual(got, []string{"8080/tcp", "8443/tcp", "8443/udp"}) {
			t.Errorf("exposed ports %v", got)
		}
		if got := keys(c.Volumes); !reflect.DeepEqual(got, []string{"/config", "/data"}) {
			t.Errorf("volumes %v", got)
		}
		for k, v := range map[string]string{
			"org.opencontainers.image.title":    "helsegate",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.licenses": "Apache-2.0",
			"org.opencontainers.image.source":   "https://github.com/helsegate/helsegate",
		} {
			if c.Labels[k] != v {
				t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
			}
		}
		if c.Labels["org.opencontainers.image.revision"] == "" {
			t.Error("no revision label")
		}
		for _, want := range []string{"XDG_DATA_HOME=/data", "XDG_CONFIG_HOME=/config", "HELSEGATE_HTTP_PORT=8080", "HELSEGATE_HTTPS_PORT=8443"} {
			if !contains(c.Env, want) {
				t.Errorf("env lacks %s: %v", want, c.Env)
			}
		}
		hc := c.Healthcheck
		if hc == nil {
			hc = inspect[0].Healthcheck
		}
		if hc == nil || !reflect.DeepEqual(hc.Test, []string{"CMD", "/usr/bin/helsegate", "health"}) {
			t.Errorf("healthcheck %+v, want the binary's health command (no shell)", hc)
		}
	})

	t.Run("filesystem", func(t *testing.T) {
		dir := t.TempDir()
		archive := filepath.Join(dir, "image.tar")
		if out, err := exec.Command(builder, "image", "save", "-o", archive, image).CombinedOutput(); err != nil {
			t.Fatalf("%s image save: %v\n%s", builder, err, out)
		}
		root := filepath.Join(dir, "root")
		owners, err := extractImage(archive, root)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"usr/bin/helsegate", "etc/ssl/certs/ca-certificates.crt", "etc/caddy/Caddyfile", "etc/passwd"} {
			if fi, err := os.Stat(filepath.Join(root, p)); err != nil || fi.Size() == 0 {
				t.Errorf("/%s missing or empty: %v", p, err)
			}
		}
		for _, p := range []string{"bin/sh", "bin/busybox", "usr/bin/curl"} {
			if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
				t.Errorf("/%s is in the image", p)
			}
		}
		for _, p := range []string{"data", "config"} {
			if owners[p] != 65532 {
				t.Errorf("/%s owned by %d, want 65532", p, owners[p])
			}
		}

		bin := filepath.Join(root, "usr/bin/helsegate")
		out, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "helsegate "+version+"\ncaddy v2.") {
			t.Errorf("the image's helsegate version: %v\n%s", err, out)
		}
		cmd := exec.Command(bin, "validate", "--config", filepath.Join(root, "etc/caddy/Caddyfile"), "--adapter", "caddyfile")
		cmd.Env = productionEnv(dir, map[string]string{
			"HELSEGATE_SITE": "https://api.example.no", "HELSEGATE_PUBLIC_ORIGIN": "https://api.example.no",
			"HELSEGATE_ENVIRONMENT": "production", "HELSEID_ISSUER": "https://helseid-sts.nhn.no",
			"KJ_UPSTREAM": "127.0.0.1:9", "MEMBERSHIP_REGISTRY": "https://registry.invalid", "REDIS_URL": "none",
		})
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("the image's Caddyfile does not validate: %v\n%s", err, out)
		}
	})
}

func keys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// extractImage unpacks the layers of a docker-archive (podman's and docker's
// image save) into root, in order, and returns the owner uid of each path.
func extractImage(archive, root string) (map[string]int, error) {
	files := map[string][]byte{}
	f, err := os.Open(archive)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
	}
	var manifest []struct{ Layers []string }
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		return nil, fmt.Errorf("manifest.json: %v", err)
	}
	owners := map[string]int{}
	for _, layer := range manifest[0].Layers {
		data, ok := files[layer]
		if !ok {
			return nil, fmt.Errorf("layer %s not in the archive", layer)
		}
		lr := tar.NewReader(bytes.NewReader(data))
		for {
			h, err := lr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", layer, err)
			}
			name := filepath.Clean(strings.TrimPrefix(h.Name, "./"))
			if name == "." || strings.HasPrefix(name, "..") || strings.HasPrefix(filepath.Base(name), ".wh.") {
				continue
			}
			owners[name] = h.Uid
			dst := filepath.Join(root, name)
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(dst, 0o755); err != nil {
					return nil, err
				}
			case tar.TypeReg:
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return nil, err
				}
				b, err := io.ReadAll(lr)
				if err != nil {
					return nil, err
				}
				if err := os.WriteFile(dst, b, os.FileMode(h.Mode)&0o755|0o600); err != nil {
					return nil, err
				}
			}
		}
	}
	return owners, nil
}
