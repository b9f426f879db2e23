package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// goroutines reads "goroutine profile: total N" from the admin endpoint and
// returns N and the whole profile.
func (g *gateway) goroutines() (int, string, error) {
	resp, err := adminClient.Get("http://" + g.admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, "", fmt.Errorf("goroutine profile: %s", resp.Status)
	}
	first, _, _ := strings.Cut(string(body), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		return 0, "", fmt.Errorf("goroutine profile: unexpected first line %q", first)
	}
	return n, string(body), nil
}

// settledGoroutines waits until two readings 200 ms apart agree (at most
// timeout) and returns the last one.
func (g *gateway) settledGoroutines(t *testing.T, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	prev := -1
	for {
		n, _, err := g.goroutines()
		if err != nil {
			t.Fatal(err)
		}
		if n == prev || time.Now().After(deadline) {
			return n
		}
		prev = n
		time.Sleep(200 * time.Millisecond)
	}
}

// profileSummary returns the first lines of each goroutine group of a
// debug=1 profile, for failure messages.
func profileSummary(profile string) string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(profile))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	take := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "goroutine profile") || (len(line) > 0 && line[0] >= '0' && line[0] <= '9') {
			out = append(out, line)
			take = 4
			continue
		}
		if take > 0 && strings.HasPrefix(line, "#") {
			out = append(out, line)
			take--
		}
	}
	return strings.Join(out, "\n")
}

// Config reloads leak no goroutines, and the replay store and
// the issuer keys survive them.
func TestReloadLeavesNoGoroutines(t *testing.T) {
	t.Run("in-process store", func(t *testing.T) { testReloads(t, "") })
	t.Run("redis", func(t *testing.T) {
		_, prefix := needRedis(t)
		testReloads(t, fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", redisAddr(), prefix))
	})
}

// testReloads runs the reload test on a gateway with the extra helseid lines.
func testReloads(t *testing.T, extra string) {
	sim := privateSim(t)
	up := newUpstream(t)
	c := newCaller(t, sim)
	site := func(i int) siteFunc {
		// Alternate a trivial change so that every load is a real reload.
		lines := []string{fmt.Sprintf("clock_skew %ds", 5+i%2)}
		if extra != "" {
			lines = append(lines, extra)
		}
		return simpleSite(sim.Issuer(), up.URL(), lines...)
	}
	g := startGateway(t, 1, site(0))
	url := g.url(0, "/api/reload")
	reload := func(i int) {
		t.Helper()
		if err := g.load(g.caddyfile(site(i))); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}

	// Warm-up: keys fetched, replay store used.
	expectOK(t, c.do(t, "GET", url))
	tok := c.token(t, helseidsim.TokenSpec{})
	used := dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))
	expectOK(t, send(t, "GET", url, used))
	fetches := sim.JWKSFetches()

	for i := 1; i <= 3; i++ {
		reload(i)
	}
	// The in-process replay store survived the reloads.
	r := send(t, "GET", url, used)
	expectProblem(t, r, http.StatusUnauthorized, "invalid_dpop_proof", tok, orgParent)
	g.expectReason(t, "deny", "proof_replay")
	expectOK(t, c.do(t, "GET", url))

	before := g.settledGoroutines(t, 5*time.Second)
	_, beforeProfile, _ := g.goroutines()

	start := time.Now()
	for i := 4; i < 54; i++ {
		reload(i)
	}
	t.Logf("50 reloads took %s", time.Since(start))
	for _, e := range g.logEntries() {
		if e["msg"] == "config is unchanged" {
			t.Fatalf("a load was skipped as unchanged: the reloads are not real")
		}
	}
	expectOK(t, c.do(t, "GET", url))

	var after int
	var afterProfile string
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		after, afterProfile, err = g.goroutines()
		if err != nil {
			t.Fatal(err)
		}
		if after <= before+5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("goroutines: %d before 50 reloads, %d after", before, after)
	if after > before+5 {
		t.Errorf("50 reloads left %d extra goroutines (%d before, %d after)\n--- before ---\n%s\n--- after ---\n%s",
			after-before, before, after, profileSummary(beforeProfile), profileSummary(afterProfile))
	}
	// The issuer keys survived too: no JWKS fetch since the warm-up.
	if got := sim.JWKSFetches(); got != fetches {
		t.Errorf("the reloads caused %d JWKS fetches; the pooled key set should survive them", got-fetches)
	}
}
