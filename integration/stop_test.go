package integration

import (
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// A clean stop (SIGINT) of a gateway with Redis, a registry and a live
// invalidation subscription logs no warning or error of its own: only
// Caddy's "exiting" notice.
func TestCleanStopIsQuiet(t *testing.T) {
	_, prefix := needRedis(t)
	org := newOrg(t)
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(org)}})
	up := newUpstream(t)
	g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("registry "+reg.URL()), redisBlock(redisAddr(), prefix), "dpop_future_skew 1s"))
	c := newCaller(t, sharedSim)
	url := g.url(0, "/api/stop")
	waitAccepted(t, g, func() reply { r, _ := c.asOrg(t, url, org); return r })

	// The subscription is up once an invalidation reaches this replica.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := adminClient.Post("http://"+g.admin+"/helseid/membership/invalidate", "application/json", strings.NewReader(`{"all":true}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code, body := resp.StatusCode, string(b)
		if code == 200 && strings.Contains(body, `"published":1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the invalidation subscription did not come up: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	before := len(g.logEntries())
	if err := g.proc.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.proc.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not stop within 10 s of SIGINT")
	}
	for _, e := range g.logEntries()[before:] { // complete: the process wrote its log to a file and has exited
		level, _ := e["level"].(string)
		msg, _ := e["msg"].(string)
		if level != "warn" && level != "error" {
			continue
		}
		if strings.HasPrefix(msg, "exiting;") || strings.Contains(msg, "requires TLS") {
			continue // Caddy's own, on every stop and every plain-http site
		}
		b, _ := json.Marshal(e)
		t.Errorf("logged on a clean stop: %s", b)
	}
}
