package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Helpers of the operations tests (metrics, privacy, health). Their names
// start with ops so they do not collide with the other test files.

// opsService is the membership service of the operations tests.
const opsService = "kjernejournal"

// opsMembershipFile writes a membership file authorizing orgs for
// opsService and returns its path.
func opsMembershipFile(t *testing.T, orgs ...string) string {
	t.Helper()
	var recs []map[string]any
	for _, org := range orgs {
		recs = append(recs, map[string]any{"organization": org, "service": opsService, "member": true, "status": "active", "valid_to": nil})
	}
	b, err := json.Marshal(map[string]any{"authorizations": recs})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "members.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// opsAdminGet GETs path on the gateway's admin endpoint and returns the
// status and the body.
func opsAdminGet(t *testing.T, g *gateway, path string) (int, string) {
	t.Helper()
	resp, err := adminClient.Get("http://" + g.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// opsScrape reads the gateway's Prometheus metrics (Caddy serves them on the
// admin endpoint at /metrics) into series -> value, a series being the
// exposition's name{labels} as written.
func opsScrape(t *testing.T, g *gateway) (map[string]float64, string) {
	t.Helper()
	status, body := opsAdminGet(t, g, "/metrics")
	if status != 200 {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, body
}

// opsSeries renders name{k="v",...} with the labels in the order given
// (Prometheus writes them sorted by name: give them sorted).
func opsSeries(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name + "{")
	for i := 0; i+1 < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", labels[i], labels[i+1])
	}
	b.WriteByte('}')
	return b.String()
}

// opsLogSeriesOnFailure logs the helsegate series of a scrape under title
// when t has failed.
func opsLogSeriesOnFailure(t *testing.T, title, body string) {
	t.Helper()
	if !t.Failed() {
		return
	}
	var lines []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "caddy_helseid_") {
			lines = append(lines, l)
		}
	}
	t.Logf("%s:\n%s", title, strings.Join(lines, "\n"))
}
