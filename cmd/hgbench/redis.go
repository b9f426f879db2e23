package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// redisServer is the Redis of the run: one that already answers, or one
// hgbench started (and stops).
type redisServer struct {
	addr    string
	client  *redis.Client
	version string
	cmd     *exec.Cmd // nil when not ours
}

// findRedis connects to addr. When nothing answers there and start is
// true, it starts redis-server (if installed) on a free loopback port with
// persistence off, as .ci/run does, in dir.
func findRedis(ctx context.Context, addr string, start bool, dir string) (*redisServer, error) {
	if r, err := connectRedis(ctx, addr); err == nil {
		return r, nil
	} else if !start {
		return nil, fmt.Errorf("no Redis answers at %s (%v); set HELSEGATE_TEST_REDIS=host:port or -redis", addr, err)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("no Redis answers at %s and redis-server is not installed: "+
			"start a Redis and set HELSEGATE_TEST_REDIS=host:port, or install one (apt-get install redis-server)", addr)
	}
	free, err := gatewayproc.FreeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", port(free), "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	fmt.Fprintf(os.Stderr, "hgbench: no Redis at %s; started redis-server on %s\n", addr, free)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := connectRedis(ctx, free)
		if err == nil {
			r.cmd = cmd
			return r, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, fmt.Errorf("redis-server on %s did not answer: %v (log: %s)", free, err, filepath.Join(dir, "redis.log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// quietLogger drops go-redis's own log lines: a Redis that does not answer
// is reported once, by findRedis.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func connectRedis(ctx context.Context, addr string) (*redisServer, error) {
	redis.SetLogger(quietLogger{})
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, ReadTimeout: 5 * time.Second, MaxRetries: -1})
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, err
	}
	r := &redisServer{addr: addr, client: c}
	if info, err := c.Info(pctx, "server").Result(); err == nil {
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				r.version = v
			}
		}
	}
	return r, nil
}

// scanCount is the COUNT of every SCAN: the keys of a whole run (a few
// hundred thousand) are counted twice per pair in a few dozen round trips.
const scanCount = 10_000

// scanLimit bounds every SCAN loop (iterations of COUNT scanCount).
const scanLimit = 10_000

// countKeys counts the keys matching pattern with SCAN.
func (r *redisServer) countKeys(ctx context.Context, pattern string) (int, error) {
	var cursor uint64
	n := 0
	for range scanLimit {
		keys, next, err := r.client.Scan(ctx, cursor, pattern, scanCount).Result()
		if err != nil {
			return n, err
		}
		n += len(keys)
		if cursor = next; cursor == 0 {
			return n, nil
		}
	}
	return n, errors.New("redis: SCAN did not finish")
}

// deleteKeys removes the keys matching pattern (the run's own prefix).
func (r *redisServer) deleteKeys(ctx context.Context, pattern string) error {
	var cursor uint64
	for range scanLimit {
		keys, next, err := r.client.Scan(ctx, cursor, pattern, scanCount).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := r.client.Unlink(ctx, keys...).Err(); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
	return errors.New("redis: SCAN did not finish")
}

// seedEpoch writes the replay store's epoch marker under prefix, as a store
// in service long before the run: a key prefix used for the first time is
// otherwise a store that may have lost its records, whose first proofs are
// refused for one skew. The bench measures the steady state.
func (r *redisServer) seedEpoch(ctx context.Context, prefix string) error {
	return cache.SeedEpochMarker(ctx, r.client, prefix, time.Hour)
}

// close closes the client and stops the redis-server hgbench started.
func (r *redisServer) close() {
	_ = r.client.Close()
	if r.cmd != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}
