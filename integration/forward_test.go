package integration

import (
	"net/http"
	"strings"
	"testing"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// identityHeaders returns the upstream headers whose name, lower-cased and
// with '_' read as '-', starts with x-helseid-, keyed by that normal form.
func identityHeaders(h http.Header) map[string][]string {
	out := map[string][]string{}
	for name, v := range h {
		n := strings.ReplaceAll(strings.ToLower(name), "_", "-")
		if strings.HasPrefix(n, "x-helseid-") {
			out[n] = append(out[n], v...)
		}
	}
	return out
}

// expectIdentity checks that the upstream saw exactly these identity headers
// (normal-form name -> the one value), no other and no duplicates.
func expectIdentity(t *testing.T, h http.Header, want map[string]string) {
	t.Helper()
	got := identityHeaders(h)
	for name, v := range want {
		if len(got[name]) != 1 || got[name][0] != v {
			t.Errorf("upstream %s = %q, want [%q]", name, got[name], v)
		}
	}
	for name, v := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("upstream got unexpected %s = %q", name, v)
		}
	}
}

// What the upstream receives: the verified identity in X-Helseid-* headers,
// never the pid.
func TestUpstreamHeaders(t *testing.T) {
	g := sharedGateway(t)
	c := newCaller(t, sharedSim)

	t.Run("machine token", func(t *testing.T) {
		g.up.reset()
		tok := c.token(t, helseidsim.TokenSpec{OrgChild: orgChild, OrgSupplier: orgSupp})
		url := g.url(0, "/api/patients/1?x=1")
		proof := c.proof(t, "GET", htuOf(url), tok, dpopclient.ProofOptions{})
		expectOK(t, send(t, "GET", url, dpopHeaders(tok, proof)))
		hits, method, path, h := g.up.last()
		if hits != 1 || method != "GET" || path != "/api/patients/1" {
			t.Fatalf("upstream saw %d requests, last %s %s; want 1 GET /api/patients/1", hits, method, path)
		}
		expectIdentity(t, h, map[string]string{
			"x-helseid-org-parent":   orgParent,
			"x-helseid-org-child":    orgChild,
			"x-helseid-org-supplier": orgSupp,
			"x-helseid-client-id":    helseidsim.DefaultClientID,
			"x-helseid-token-kind":   "machine",
			"x-helseid-dpop-jkt":     c.key.Thumbprint(),
		})
		if got := h.Values("Authorization"); len(got) != 1 || got[0] != "DPoP "+tok {
			t.Errorf("upstream Authorization %q, want the client's unchanged", got)
		}
		if got := h.Values("DPoP"); len(got) != 1 || got[0] != proof {
			t.Errorf("upstream DPoP %q, want the client's proof unchanged", got)
		}
		// Placeholders: {http.auth.user.id} is client_id without sub.
		if got := h.Get("X-Test-User-Id"); got != helseidsim.DefaultClientID {
			t.Errorf("{http.auth.user.id} = %q, want the client_id %q", got, helseidsim.DefaultClientID)
		}
		if got := h.Get("X-Test-Jkt"); got != c.key.Thumbprint() {
			t.Errorf("{http.auth.user.jkt} = %q, want %q", got, c.key.Thumbprint())
		}
		g.expectReason(t, "allow", "ok")
	})

	t.Run("user token", func(t *testing.T) {
		g.up.reset()
		const pid, hpr = "17056600574", "565501872"
		tok := c.token(t, helseidsim.TokenSpec{OrgChild: orgChild, PID: pid, SecurityLevel: "4", HPRNumber: hpr, AssuranceLevel: "high",
			Extra: map[string]any{"sub": "pseudonym-7f3a"}})
		url := g.url(0, "/api/user")
		expectOK(t, send(t, "POST", url, dpopHeaders(tok, c.proof(t, "POST", url, tok, dpopclient.ProofOptions{}))))
		hits, method, _, h := g.up.last()
		if hits != 1 || method != "POST" {
			t.Fatalf("upstream saw %d requests, last %s; want 1 POST", hits, method)
		}
		expectIdentity(t, h, map[string]string{
			"x-helseid-org-parent":     orgParent,
			"x-helseid-org-child":      orgChild,
			"x-helseid-client-id":      helseidsim.DefaultClientID,
			"x-helseid-token-kind":     "user",
			"x-helseid-security-level": "4",
			"x-helseid-hpr-number":     hpr,
			"x-helseid-dpop-jkt":       c.key.Thumbprint(),
		})
		if got := h.Get("X-Test-User-Id"); got != "pseudonym-7f3a" {
			t.Errorf("{http.auth.user.id} = %q, want the sub", got)
		}
		for name, vals := range h {
			for _, v := range vals {
				if strings.Contains(v, pid) {
					t.Errorf("the pid reached the upstream in %s", name)
				}
			}
		}
		// The audit entry must not hold the pid either: no log carries it.
		for _, e := range g.logEntries() {
			for k, v := range e {
				if s, ok := v.(string); ok && strings.Contains(s, pid) {
					t.Errorf("the gateway log holds the pid in %q of %v", k, e["msg"])
				}
			}
		}
	})

	t.Run("forward_token off", func(t *testing.T) {
		g.up.reset()
		url := g.url(0, "/off/x")
		expectOK(t, c.do(t, "GET", url))
		hits, _, path, h := g.up.last()
		if hits != 1 || path != "/off/x" {
			t.Fatalf("upstream saw %d requests, last %s; want 1 /off/x", hits, path)
		}
		if v := h.Values("Authorization"); len(v) != 0 {
			t.Errorf("with forward_token off the upstream got Authorization %q", v)
		}
		if v := h.Values("DPoP"); len(v) != 0 {
			t.Errorf("with forward_token off the upstream got DPoP %q", v)
		}
		if v := h.Get("X-Helseid-Org-Parent"); v != orgParent {
			t.Errorf("with forward_token off the upstream got X-Helseid-Org-Parent %q, want %q", v, orgParent)
		}
	})

	t.Run("dpop optional: unbound Bearer token", func(t *testing.T) {
		g.up.reset()
		tok := c.token(t, helseidsim.TokenSpec{JKT: "-"})
		expectOK(t, send(t, "GET", g.url(0, "/optional/x"), map[string][]string{"Authorization": {"Bearer " + tok}}))
		_, _, _, h := g.up.last()
		expectIdentity(t, h, map[string]string{
			"x-helseid-org-parent": orgParent,
			"x-helseid-client-id":  helseidsim.DefaultClientID,
			"x-helseid-token-kind": "machine",
		})
	})
}

// Inbound X-Helseid-* headers, in any spelling, never reach the upstream.
func TestSpoofedIdentityHeaders(t *testing.T) {
	g := sharedGateway(t)
	c := newCaller(t, sharedSim)
	spoof := map[string][]string{
		"X-Helseid-Org-Parent":     {"999999999"},
		"x-helseid-token-kind":     {"user"},
		"X_Helseid_Client_Id":      {"evil"},
		"X-HELSEID-SECURITY-LEVEL": {"4"},
		"x_helseid-hpr_number":     {"123456789"},
		"X-Helseid-Org-Child":      {"888888888"},
	}
	spoofed := map[string]bool{"999999999": true, "user": true, "evil": true, "4": true, "123456789": true, "888888888": true}

	t.Run("allowed", func(t *testing.T) {
		g.up.reset()
		tok := c.token(t, helseidsim.TokenSpec{})
		url := g.url(0, "/api/spoof")
		h := dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))
		for k, v := range spoof {
			h[k] = v
		}
		expectOK(t, send(t, "GET", url, h))
		_, _, _, up := g.up.last()
		for name, vals := range identityHeaders(up) {
			for _, v := range vals {
				if spoofed[v] {
					t.Errorf("spoofed value %q reached the upstream in %s", v, name)
				}
			}
		}
		// Only the verified identity of a machine token: no security level, no HPR, no child org.
		expectIdentity(t, up, map[string]string{
			"x-helseid-org-parent": orgParent,
			"x-helseid-client-id":  helseidsim.DefaultClientID,
			"x-helseid-token-kind": "machine",
			"x-helseid-dpop-jkt":   c.key.Thumbprint(),
		})
	})

	t.Run("denied", func(t *testing.T) {
		g.up.reset()
		h := map[string][]string{}
		for k, v := range spoof {
			h[k] = v
		}
		r := send(t, "GET", g.url(0, "/api/spoof"), h)
		expectProblem(t, r, http.StatusUnauthorized, "unauthorized")
		if hits, _, _, _ := g.up.last(); hits != 0 {
			t.Errorf("a denied request reached the upstream (%d hits)", hits)
		}
		// A bad proof too.
		tok := c.token(t, helseidsim.TokenSpec{})
		h = dpopHeaders(tok, c.proof(t, "POST", g.url(0, "/api/spoof"), tok, dpopclient.ProofOptions{}))
		for k, v := range spoof {
			h[k] = v
		}
		r = send(t, "GET", g.url(0, "/api/spoof"), h)
		expectProblem(t, r, http.StatusUnauthorized, "invalid_dpop_proof", tok)
		if hits, _, _, _ := g.up.last(); hits != 0 {
			t.Errorf("a denied request reached the upstream (%d hits)", hits)
		}
	})
}
