package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// redisPassword is the password of the Redis URLs of these tests: it must
// never reach the gateway's log.
const redisPassword = "logtest-pw-5b1e9c"

// expectRedisLogJSON polls, making a request each time with do, until the
// gateway's stderr holds a go-redis line as a JSON entry of the
// http.handlers.helseid.redis logger, at warn, that contains want; then it
// checks that no line of stderr is anything but JSON and that the password
// appears nowhere.
func expectRedisLogJSON(t *testing.T, g *gateway, want string, do func()) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		do()
		e := g.findLog(func(e map[string]any) bool {
			msg, _ := e["msg"].(string)
			return e["logger"] == "http.handlers.helseid.redis" && strings.Contains(msg, want)
		})
		if e != nil {
			if e["level"] != "warn" {
				t.Errorf("go-redis entry at %v, want warn: %v", e["level"], e)
			}
			t.Logf("go-redis entry: %v", e)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no JSON entry of http.handlers.helseid.redis containing %q after 20 s", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(g.errPath)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !json.Valid(line) {
			t.Errorf("a line of the gateway's stderr is not JSON: %s", line)
		}
		if bytes.Contains(line, []byte(redisPassword)) {
			t.Errorf("the Redis password is in the gateway's log: %s", line)
		}
	}
}

// go-redis writes its own lines (a dial that failed, a pub/sub connection
// lost) through Caddy's logger, as JSON, rate-limited, without the password.
func TestRedisLogThroughCaddy(t *testing.T) {
	t.Run("Redis refuses connections", func(t *testing.T) {
		t.Setenv("HG_LOGTEST_REDIS_URL", "redis://:"+redisPassword+"@"+mustFreePort()+"/0")
		up := newUpstream(t)
		g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(), "redis {env.HG_LOGTEST_REDIS_URL}", "dpop_future_skew 1s"))
		c := newCaller(t, sharedSim)
		expectRedisLogJSON(t, g, "failed to dial", func() {
			// on_store_error local: the replay check falls back (once the
			// proofs are issued after Redis began failing), 200.
			waitAccepted(t, g, func() reply { return c.do(t, "GET", g.url(0, "/api/l")) })
		})
	})

	t.Run("Redis killed", func(t *testing.T) {
		bin, err := exec.LookPath("redis-server")
		if err != nil {
			t.Fatal("redis-server is not installed (.ci/run installs it)")
		}
		addr := mustFreePort()
		_, port, _ := strings.Cut(addr, ":")
		srv := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--requirepass", redisPassword, "--dir", t.TempDir())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = srv.Wait(); close(exited) }()
		kill := func() {
			_ = srv.Process.Kill()
			<-exited
		}
		t.Cleanup(kill)
		rc := redis.NewClient(&redis.Options{Addr: addr, Password: redisPassword})
		defer rc.Close()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := rc.Ping(ctx).Err()
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redis-server on %s did not answer: %v", addr, err)
			}
		}

		t.Setenv("HG_LOGTEST_REDIS_URL", "redis://:"+redisPassword+"@"+addr+"/0")
		member := newOrg(t)
		reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(member)}})
		up := newUpstream(t)
		g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
			"redis {env.HG_LOGTEST_REDIS_URL}", "dpop_future_skew 1s", membershipBlock("registry "+reg.URL())))
		c := newCaller(t, sharedSim)
		url := g.url(0, "/api/k")
		// Replay keys, the membership tier and its pub/sub subscription all
		// use this Redis.
		// A Redis that started moments ago: proofs issued before its start
		// plus the skew are refused first.
		waitAccepted(t, g, func() reply { r, _ := c.asOrg(t, url, member); return r })
		if e := g.findLog(func(e map[string]any) bool { return e["logger"] == "http.handlers.helseid.redis" }); e != nil {
			t.Errorf("go-redis logged with Redis up: %v", e)
		}

		kill()
		expectRedisLogJSON(t, g, "failed to dial", func() {
			// The in-process tier and the local replay store.
			waitAccepted(t, g, func() reply { r, _ := c.asOrg(t, url, member); return r })
		})
	})
}
