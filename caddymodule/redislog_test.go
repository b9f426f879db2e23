package caddymodule

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/time/rate"

	"github.com/helsegate/helsegate/cache"
)

// observedRedisLogger returns a redisLogger writing to an observer, which
// lets one line through per hour unless the test resets it.
func observedRedisLogger() (*redisLogger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := newRedisLogger(func() *zap.Logger { return zap.New(core).Named(redisLoggerName) })
	l.every = rate.NewLimiter(rate.Every(time.Hour), 1)
	return l, logs
}

func TestRedisLoggerFormats(t *testing.T) {
	l, logs := observedRedisLogger()
	l.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v\n", 5,
		errors.New("dial tcp 127.0.0.1:1: connect: connection refused"))
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d entries, want 1", len(entries))
	}
	e := entries[0]
	if e.Level != zapcore.WarnLevel || e.LoggerName != redisLoggerName {
		t.Errorf("entry at %s on %q, want warn on %q", e.Level, e.LoggerName, redisLoggerName)
	}
	if want := "redis: connection pool: failed to dial after 5 attempts: dial tcp 127.0.0.1:1: connect: connection refused"; e.Message != want {
		t.Errorf("message %q, want %q", e.Message, want)
	}
	if _, ok := e.ContextMap()["dropped"]; ok {
		t.Errorf("the first line says lines were dropped: %v", e.ContextMap())
	}
}

func TestRedisLoggerRateLimited(t *testing.T) {
	l, logs := observedRedisLogger()
	for i := range 100 {
		l.Printf(context.Background(), "redis: line %d", i)
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("100 lines within the interval gave %d entries, want 1", n)
	}
	l.every = rate.NewLimiter(rate.Every(time.Hour), 1) // as if the interval had passed
	l.Printf(context.Background(), "redis: after the interval")
	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("%d entries after the interval, want 2", len(entries))
	}
	if got := entries[1].ContextMap()["dropped"]; got != int64(99) {
		t.Errorf("the line after the interval says dropped=%v, want 99", got)
	}
	l.every = rate.NewLimiter(rate.Every(time.Hour), 1)
	l.Printf(context.Background(), "redis: again")
	if _, ok := logs.All()[2].ContextMap()["dropped"]; ok {
		t.Errorf("dropped reported twice: %v", logs.All()[2].ContextMap())
	}
}

func TestRedisLoggerRedacts(t *testing.T) {
	l, logs := observedRedisLogger()
	cfgs := []cache.RedisConfig{
		{URL: "redis://:pa%3Ass@redis.internal:6379/0"},
		{Addrs: []string{"s1:26379"}, MasterName: "m", Password: "sentinel-secret"},
		{URL: "rediss://onlysecret@redis.internal:6380"},
	}
	for _, c := range cfgs {
		l.addSecrets(c.Secrets())
	}
	for _, line := range []string{
		"redis: auth failed with pa:ss and pa%3Ass",
		"sentinel: GetMasterAddrByName failed: sentinel-secret rejected",
		"redis: bad token onlysecret",
		"redis: dialing rediss://user:unknown-pw@elsewhere:6379/1 failed",
		"redis: dialing redis://:another@[::1]:6379 failed",
	} {
		l.every = rate.NewLimiter(rate.Every(time.Hour), 1)
		l.Printf(context.Background(), "%s", line)
	}
	entries := logs.All()
	if len(entries) != 5 {
		t.Fatalf("%d entries, want 5", len(entries))
	}
	for _, e := range entries {
		for _, secret := range []string{"pa:ss", "pa%3Ass", "sentinel-secret", "onlysecret", "unknown-pw", "another"} {
			if strings.Contains(e.Message, secret) {
				t.Errorf("a secret (%s) in %q", secret, e.Message)
			}
		}
		if !strings.Contains(e.Message, "[redacted]") {
			t.Errorf("nothing redacted in %q", e.Message)
		}
	}
	if want := "redis: dialing rediss://[redacted]@elsewhere:6379/1 failed"; entries[3].Message != want {
		t.Errorf("URL userinfo: %q, want %q", entries[3].Message, want)
	}
}
