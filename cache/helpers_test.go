package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// fakeClock is an authz.Clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testRedisAddr is the Redis the tests use: HELSEGATE_TEST_REDIS or the local one.
func testRedisAddr() string {
	if a := os.Getenv("HELSEGATE_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// testRedis returns a client of the test Redis, built the way the gateway
// builds one, and fails the test when Redis does not answer: CI provides one.
func testRedis(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	opts, err := RedisConfig{Addrs: []string{testRedisAddr()}}.UniversalOptions()
	if err != nil {
		tb.Fatal(err)
	}
	// Generous timeouts: these tests are about what the stores do with
	// Redis's answers, and a starved test machine can miss the gateway's
	// 200 ms read timeout without Redis being gone. The tests of timeouts
	// make them with hooks (timeoutOnceHook, gateHook), not with a clock.
	opts.ReadTimeout, opts.WriteTimeout = 5*time.Second, 5*time.Second
	c := redis.NewUniversalClient(opts)
	tb.Cleanup(func() { _ = c.Close() })
	var err2 error
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err2 = c.Ping(ctx).Err()
		cancel()
		if err2 == nil {
			return c
		}
	}
	tb.Fatalf("no Redis at %s (set HELSEGATE_TEST_REDIS): %v", testRedisAddr(), err2)
	return nil
}

// testPrefix returns a key prefix unique to this test and deletes every key
// under it when the test ends.
func testPrefix(tb testing.TB, c redis.UniversalClient) string {
	tb.Helper()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	prefix := "helsegate-test:" + hex.EncodeToString(b) + ":"
	seedEpoch(tb, prefix)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 1000 {
				c.Del(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
		if err := iter.Err(); err != nil {
			tb.Errorf("cleaning up %s*: %v", prefix, err)
		}
	})
	return prefix
}

// seedEpoch writes the replay store's epoch marker under prefix as a store
// in service long before the test would hold it ("generation 1, no floor",
// no run_id): a key prefix used for the first time is otherwise treated as a
// store that may have lost its records, and refuses proofs for one skew.
// Tests of that first look use a prefix of their own.
// It writes through a client of its own, so that hooks a test put on its
// client see nothing of it.
func seedEpoch(tb testing.TB, prefix string) {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: testRedisAddr()})
	defer c.Close()
	if err := SeedEpochMarker(context.Background(), c, prefix, time.Hour); err != nil {
		tb.Fatalf("seeding the epoch marker: %v", err)
	}
}

// deadRedis returns a client of an address where nothing listens.
func deadRedis(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	opts, err := RedisConfig{Addrs: []string{"127.0.0.1:1"}}.UniversalOptions()
	if err != nil {
		tb.Fatal(err)
	}
	c := redis.NewUniversalClient(opts)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// argsHook records the arguments of every command a client sends, those of
// pipelines included, and the pipelines themselves.
type argsHook struct {
	mu    sync.Mutex
	args  [][]any
	pipes [][][]any
}

func (h *argsHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *argsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		var pipe [][]any
		for _, cmd := range cmds {
			h.args = append(h.args, cmd.Args())
			pipe = append(pipe, cmd.Args())
		}
		h.pipes = append(h.pipes, pipe)
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// lastPipe returns the arguments of the commands of the last pipeline.
func (h *argsHook) lastPipe() [][]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.pipes) == 0 {
		return [][]any{{}}
	}
	return h.pipes[len(h.pipes)-1]
}

// lastNamed returns the arguments of the last command called name.
func (h *argsHook) lastNamed(name string) []any {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.args) - 1; i >= 0; i-- {
		if h.args[i][0] == name {
			return h.args[i]
		}
	}
	return nil
}

// lastPipeWith returns the commands of the last pipeline that sent a command
// called name (go-redis's connection setup is a pipeline too).
func (h *argsHook) lastPipeWith(name string) [][]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.pipes) - 1; i >= 0; i-- {
		for _, args := range h.pipes[i] {
			if args[0] == name {
				return h.pipes[i]
			}
		}
	}
	return nil
}

func (h *argsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		h.args = append(h.args, cmd.Args())
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (h *argsHook) last() []any {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.args) == 0 {
		return nil
	}
	return h.args[len(h.args)-1]
}
