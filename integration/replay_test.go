package integration

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// htu is judged against the ORIGINAL request URI, before Caddy
// rewrites it (handle_path strips /kj).
func TestHTUAgainstOriginalURI(t *testing.T) {
	g := sharedGateway(t)
	c := newCaller(t, sharedSim)

	t.Run("proof for the original URI", func(t *testing.T) {
		g.up.reset()
		expectOK(t, c.do(t, "GET", g.url(0, "/kj/x")))
		if hits, _, path, _ := g.up.last(); hits != 1 || path != "/x" {
			t.Errorf("upstream saw %d requests, last path %q; want 1 with /x (prefix stripped)", hits, path)
		}
	})

	t.Run("proof for the rewritten URI", func(t *testing.T) {
		g.up.reset()
		tok := c.token(t, helseidsim.TokenSpec{})
		r := send(t, "GET", g.url(0, "/kj/x"), dpopHeaders(tok, c.proof(t, "GET", g.url(0, "/x"), tok, dpopclient.ProofOptions{})))
		expectProblem(t, r, http.StatusUnauthorized, "invalid_dpop_proof", tok, orgParent)
		expectErrorChallenge(t, r, "invalid_dpop_proof")
		g.expectReason(t, "deny", "proof_htu")
		if hits, _, _, _ := g.up.last(); hits != 0 {
			t.Errorf("a denied request reached the upstream")
		}
	})

	t.Run("normalized htu", func(t *testing.T) {
		// RFC 3986 §6.2.2–6.2.3: case of scheme and host, default port,
		// percent-encoded unreserved characters.
		tok := c.token(t, helseidsim.TokenSpec{})
		url := g.url(0, "/kj/a-b")
		htu := "HTTP://" + g.addrs[0] + "/kj/a%2Db"
		expectOK(t, send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", htu, tok, dpopclient.ProofOptions{}))))
	})
}

// A proof is accepted once, across every replica sharing Redis
// and, without Redis, within one process.
func TestReplay(t *testing.T) {
	t.Run("second gateway sharing Redis", func(t *testing.T) {
		rc, prefix := needRedis(t)
		up := newUpstream(t)
		site := simpleSite(sharedSim.Issuer(), up.URL(),
			"public_origin http://gateway.test",
			fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", redisAddr(), prefix))
		a := startGateway(t, 1, site)
		b := startGateway(t, 1, site)
		c := newCaller(t, sharedSim)

		tok := c.token(t, helseidsim.TokenSpec{})
		proof := c.proof(t, "GET", "http://gateway.test/api/r", tok, dpopclient.ProofOptions{})
		expectOK(t, send(t, "GET", a.url(0, "/api/r"), dpopHeaders(tok, proof)))

		// The replay entry is in Redis, under the prefix, with a TTL.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		keys, err := redisKeys(ctx, rc, prefix+"v1:dpop:*")
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 {
			t.Errorf("want 1 replay key under %sv1:dpop:, found %q", prefix, keys)
		}
		for _, k := range keys {
			if ttl := rc.PTTL(ctx, k).Val(); ttl <= 0 || ttl > time.Minute {
				t.Errorf("replay key %s has TTL %s, want a positive TTL of about the proof window", k, ttl)
			}
		}

		up.reset()
		r := send(t, "GET", b.url(0, "/api/r"), dpopHeaders(tok, proof))
		expectProblem(t, r, http.StatusUnauthorized, "invalid_dpop_proof", tok, orgParent)
		expectErrorChallenge(t, r, "invalid_dpop_proof")
		b.expectReason(t, "deny", "proof_replay")
		if hits, _, _, _ := up.last(); hits != 0 {
			t.Errorf("the replayed request reached the upstream")
		}

		// A fresh proof goes through on B.
		proof = c.proof(t, "GET", "http://gateway.test/api/r", tok, dpopclient.ProofOptions{})
		expectOK(t, send(t, "GET", b.url(0, "/api/r"), dpopHeaders(tok, proof)))
	})

	t.Run("single gateway, in-process store", func(t *testing.T) {
		g := sharedGateway(t)
		c := newCaller(t, sharedSim)
		url := g.url(0, "/api/replay")
		tok := c.token(t, helseidsim.TokenSpec{})
		h := dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))
		expectOK(t, send(t, "GET", url, h))
		g.up.reset()
		r := send(t, "GET", url, h)
		expectProblem(t, r, http.StatusUnauthorized, "invalid_dpop_proof", tok, orgParent)
		expectErrorChallenge(t, r, "invalid_dpop_proof")
		g.expectReason(t, "deny", "proof_replay")
		if hits, _, _, _ := g.up.last(); hits != 0 {
			t.Errorf("the replayed request reached the upstream")
		}
	})
}

// on_store_error: with Redis unreachable, local falls back to the in-process
// store for proofs issued after Redis began failing (plus the future skew:
// before that, another replica may have accepted them through Redis), deny
// refuses with 503 and Retry-After.
func TestRedisDown(t *testing.T) {
	up := newUpstream(t)
	iss := sharedSim.Issuer()
	g := startGateway(t, 1, func(addrs []string) string {
		local := helseid(iss, "redis redis://127.0.0.1:1", "dpop_future_skew 1s") + "reverse_proxy " + up.URL() + "\n"
		deny := helseid(iss, "redis redis://127.0.0.1:1", "on_store_error deny") + "reverse_proxy " + up.URL() + "\n"
		return fmt.Sprintf("http://%s {\n\thandle /local/* {\n%s\t}\n\thandle /deny/* {\n%s\t}\n}\n",
			addrs[0], indent(indent(local)), indent(indent(deny)))
	})
	c := newCaller(t, sharedSim)

	t.Run("on_store_error local", func(t *testing.T) {
		url := g.url(0, "/local/x")
		refused := waitAccepted(t, g, func() reply { return c.do(t, "GET", url) })
		if refused == 0 {
			t.Errorf("the first proof after Redis began failing was accepted on the in-process store's word")
		}
		for range 3 {
			expectOK(t, c.do(t, "GET", url))
		}
		// The in-process fallback still refuses a replay.
		tok := c.token(t, helseidsim.TokenSpec{})
		h := dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))
		expectOK(t, send(t, "GET", url, h))
		r := send(t, "GET", url, h)
		expectProblem(t, r, http.StatusUnauthorized, "invalid_dpop_proof", tok, orgParent)
	})

	t.Run("on_store_error deny", func(t *testing.T) {
		up.reset()
		tok := c.token(t, helseidsim.TokenSpec{})
		url := g.url(0, "/deny/x")
		r := send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{})))
		expectProblem(t, r, http.StatusServiceUnavailable, "temporarily_unavailable", tok, orgParent)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After: %s", r)
		}
		if v := r.header.Values("WWW-Authenticate"); len(v) != 0 {
			t.Errorf("503 with WWW-Authenticate %q", v)
		}
		g.expectReason(t, "deny", "replay_store_unavailable")
		if hits, _, _, _ := up.last(); hits != 0 {
			t.Errorf("a denied request reached the upstream")
		}
	})
}

// waitAccepted sends do's requests until one is answered 200, for at most
// 15 s, and returns how many were refused before. Each refusal must be the
// 503 replay_store_recovering of a replay store that cannot vouch for
// proofs issued before it began failing or lost records.
func waitAccepted(t *testing.T, g *gateway, do func() reply) (refused int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := do()
		if r.status == http.StatusOK {
			return refused
		}
		expectProblem(t, r, http.StatusServiceUnavailable, "temporarily_unavailable")
		g.expectReason(t, "deny", "replay_store_recovering")
		if t.Failed() || time.Now().After(deadline) {
			t.Fatalf("no request accepted after %d refusals", refused)
		}
		refused++
		time.Sleep(100 * time.Millisecond)
	}
}
