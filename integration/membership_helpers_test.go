package integration

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// Helpers of the membership tests; other end-to-end tests use them too.

// service is the membership service of every test.
const service = "kjernejournal"

// newOrg returns a random valid organization number (mod-11 check digit).
func newOrg(t *testing.T) string {
	t.Helper()
	weights := [8]int{3, 2, 7, 6, 5, 4, 3, 2}
	for {
		n, err := rand.Int(rand.Reader, big.NewInt(90_000_000))
		if err != nil {
			t.Fatal(err)
		}
		digits := strconv.FormatInt(80_000_000+n.Int64(), 10)[:8] // 8xxxxxxx or 9xxxxxxx, as Enhetsregisteret
		sum := 0
		for i := range 8 {
			sum += int(digits[i]-'0') * weights[i]
		}
		check := 11 - sum%11
		if check == 11 {
			check = 0
		}
		if check == 10 {
			continue
		}
		org := digits + strconv.Itoa(check)
		if !authz.ValidOrgNumber(org) {
			t.Fatalf("test bug: generated %s is not valid", org)
		}
		return org
	}
}

// active is an active, open-ended authorization of org for the service.
func active(org string) authz.Authorization {
	from := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second)
	return authz.Authorization{Organization: org, Service: service, Member: true, Status: "active", ValidFrom: &from}
}

// startRegistry starts a registry simulator for the test.
func startRegistry(t *testing.T, opts registrysim.Options) *registrysim.Server {
	t.Helper()
	reg, err := registrysim.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

// membershipBlock renders `membership kjernejournal { lines }`.
func membershipBlock(lines ...string) string {
	return "membership " + service + " {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

// redisBlock renders a redis subdirective for addr with key prefix.
func redisBlock(addr, prefix string) string {
	return fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", addr, prefix)
}

// doSpec sends method url with a fresh token minted from spec and a correct
// proof, and returns the reply and the token.
func (c *caller) doSpec(t *testing.T, method, url string, spec helseidsim.TokenSpec) (reply, string) {
	t.Helper()
	tok := c.token(t, spec)
	return send(t, method, url, dpopHeaders(tok, c.proof(t, method, htuOf(url), tok, dpopclient.ProofOptions{}))), tok
}

// asOrg sends GET url as a caller whose orgnr_parent is org.
func (c *caller) asOrg(t *testing.T, url, org string) (reply, string) {
	t.Helper()
	return c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: org})
}

// expectNotMember checks the 403 not_member answer for an unauthorized organization: no
// challenge, error not_member, and the audit reason.
func expectNotMember(t *testing.T, g *gateway, r reply, tok, org, reason string) {
	t.Helper()
	expectProblem(t, r, http.StatusForbidden, "not_member", tok, org)
	expectChallenge(t, r)
	g.expectReason(t, "deny", reason)
	if e := g.lastAudit(); e != nil && e["service"] != service {
		t.Errorf("audit entry names service %v, want %q", e["service"], service)
	}
}

// expectUnavailable checks the 503 registry_unavailable answer for an unknown membership with the
// registry unreachable.
func expectUnavailable(t *testing.T, g *gateway, r reply, tok, org, reason string) {
	t.Helper()
	expectProblem(t, r, http.StatusServiceUnavailable, "registry_unavailable", tok, org)
	expectChallenge(t, r)
	if r.header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %s", r)
	}
	g.expectReason(t, "deny", reason)
}

// expectMemberOK checks a 200 from the upstream carrying X-Helseid-Membership.
func expectMemberOK(t *testing.T, up *upstream, r reply) {
	t.Helper()
	expectOK(t, r)
	if _, _, _, h := up.last(); h.Get("X-Helseid-Membership") != service {
		t.Errorf("upstream X-Helseid-Membership = %q, want %q", h.Get("X-Helseid-Membership"), service)
	}
}

// findLog returns the first log entry for which match is true, or nil.
func (g *gateway) findLog(match func(e map[string]any) bool) map[string]any {
	for _, e := range g.logEntries() {
		if match(e) {
			return e
		}
	}
	return nil
}

// msgContains matches log entries at level whose msg contains s.
func msgContains(level, s string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		msg, _ := e["msg"].(string)
		return e["level"] == level && strings.Contains(msg, s)
	}
}

// invalidate POSTs body to the gateway's admin invalidation endpoint.
func (g *gateway) invalidate(t *testing.T, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+g.admin+"/helseid/membership/invalidate", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("POST invalidate: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST invalidate %s: %s: %s", body, resp.Status, b)
	}
	var got struct{ Caches, Published int }
	if err := json.Unmarshal(b, &got); err != nil || got.Published < 1 {
		t.Errorf("POST invalidate %s answered %s: want at least one replica counted as a receiver", body, b)
	}
}

// pollStatus sends requests as org until one answers want or the deadline
// passes, and returns the last reply and how long it took.
func pollStatus(t *testing.T, c *caller, url, org string, want int, within time.Duration) (reply, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		r, _ := c.asOrg(t, url, org)
		if r.status == want || time.Since(start) > within {
			return r, time.Since(start)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
