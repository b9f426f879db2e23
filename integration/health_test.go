package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// opsHealth is the part of GET /helseid/health the tests read.
type opsHealth struct {
	Status  string `json:"status"`
	Issuers []struct {
		Issuer      string   `json:"issuer"`
		Status      string   `json:"status"`
		LastSuccess string   `json:"jwks_last_success"`
		Age         *float64 `json:"jwks_age_seconds"`
		Keys        int      `json:"keys"`
	} `json:"issuers"`
	Redis []struct {
		Addrs   []string `json:"addrs"`
		Status  string   `json:"status"`
		Breaker string   `json:"breaker"`
		Ping    string   `json:"ping"`
		Error   string   `json:"error"`
	} `json:"redis"`
	Registries []struct {
		Service string `json:"service"`
		Source  string `json:"source"`
		Status  string `json:"status"`
	} `json:"registries"`
}

func opsGetHealth(t *testing.T, g *gateway) (int, opsHealth, string) {
	t.Helper()
	status, body := opsAdminGet(t, g, "/helseid/health")
	var h opsHealth
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("health body is not JSON: %v: %s", err, body)
	}
	return status, h, body
}

// The admin endpoint's GET /helseid/health: 200 with everything reachable,
// 503 with Redis pointed at a dead address; no password in either.
func TestHealthEndpoint(t *testing.T) {
	const password = "s3cret-redis-pw"
	up := newUpstream(t)
	file := opsMembershipFile(t, orgParent)
	iss := sharedSim.Issuer()

	t.Run("fine", func(t *testing.T) {
		_, prefix := needRedis(t)
		g := startGateway(t, 1, simpleSite(iss, up.URL(),
			fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", redisAddr(), prefix),
			"membership "+opsService+" {\n\tfile "+file+"\n}"))

		// Before any request the keys are not fetched: pending, not a failure.
		status, h, body := opsGetHealth(t, g)
		if status != http.StatusOK || h.Status != "ok" || len(h.Issuers) != 1 || h.Issuers[0].Status != "pending" {
			t.Fatalf("fresh gateway: %d %s", status, body)
		}

		c := newCaller(t, sharedSim)
		expectOK(t, c.do(t, "GET", g.url(0, "/api/h")))
		status, h, body = opsGetHealth(t, g)
		if status != http.StatusOK || h.Status != "ok" {
			t.Fatalf("want 200 ok, got %d: %s", status, body)
		}
		if len(h.Issuers) != 1 || h.Issuers[0].Issuer != iss || h.Issuers[0].Status != "ok" ||
			h.Issuers[0].LastSuccess == "" || h.Issuers[0].Age == nil || h.Issuers[0].Keys == 0 {
			t.Errorf("issuers: %s", body)
		}
		if len(h.Redis) != 1 || h.Redis[0].Status != "ok" || h.Redis[0].Ping != "ok" || h.Redis[0].Breaker != "closed" ||
			strings.Join(h.Redis[0].Addrs, ",") != redisAddr() {
			t.Errorf("redis: %s", body)
		}
		if len(h.Registries) != 1 || h.Registries[0].Service != opsService || h.Registries[0].Source != "file" || h.Registries[0].Status != "ok" {
			t.Errorf("registries: %s", body)
		}
	})

	t.Run("redis down", func(t *testing.T) {
		dead := mustFreePort() // nothing listens there
		g := startGateway(t, 1, simpleSite(iss, up.URL(), "redis redis://:"+password+"@"+dead))
		status, h, body := opsGetHealth(t, g)
		if status != http.StatusServiceUnavailable || h.Status != "down" {
			t.Fatalf("want 503 down, got %d: %s", status, body)
		}
		if len(h.Redis) != 1 || h.Redis[0].Status != "down" || h.Redis[0].Ping != "error" || h.Redis[0].Error == "" ||
			strings.Join(h.Redis[0].Addrs, ",") != dead {
			t.Errorf("redis: %s", body)
		}
		if strings.Contains(body, password) {
			t.Errorf("the health report carries the Redis password: %s", body)
		}
	})
}
