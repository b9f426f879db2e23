package caddymodule

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// redisLoggerName is the logger of go-redis's own log lines.
const redisLoggerName = "http.handlers.helseid.redis"

// redisLogInterval is the least time between two go-redis lines let through:
// at most four a second, however fast a dead Redis makes go-redis write them.
const redisLogInterval = 250 * time.Millisecond

// redisLog is the process's go-redis logger. go-redis has one logger per
// process (redis.SetLogger), whatever the clients and configs, so it is set
// once, by the first Provision that configures a Redis client.
var (
	redisLog     = newRedisLogger(func() *zap.Logger { return caddy.Log().Named(redisLoggerName) })
	redisLogOnce sync.Once
)

// installRedisLogger routes go-redis's log lines through Caddy's logger from
// now on, and has them redacted of secrets, a Redis config's password among
// them.
func installRedisLogger(secrets []string) {
	redisLog.addSecrets(secrets)
	redisLogOnce.Do(func() { redis.SetLogger(redisLog) })
}

// redisLogger is go-redis's logger (its internal.Logging interface): instead
// of plain-text lines on stderr, outside Caddy's logs, every line becomes a
// Warn entry of the logger redisLoggerName in Caddy's default log, at most
// one per redisLogInterval; the entry let through after some were dropped
// says how many in "dropped". A line never carries a password: the secrets
// of every Redis config this process has used are replaced, and so is the
// userinfo of anything that looks like a URL.
type redisLogger struct {
	logger  func() *zap.Logger // the default log may change with a reload: asked per line
	every   *rate.Limiter      // one line per redisLogInterval
	dropped atomic.Int64

	mu      sync.RWMutex
	secrets []string // longest first, so that a secret containing another goes whole
}

func newRedisLogger(logger func() *zap.Logger) *redisLogger {
	return &redisLogger{logger: logger, every: rate.NewLimiter(rate.Every(redisLogInterval), 1)}
}

// addSecrets adds strings that must never appear in a line. They are kept
// for the life of the process: a client of a config replaced by a reload may
// still log while it closes.
func (l *redisLogger) addSecrets(secrets []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range secrets {
		if s != "" && !slices.Contains(l.secrets, s) {
			l.secrets = append(l.secrets, s)
		}
	}
	slices.SortFunc(l.secrets, func(a, b string) int { return len(b) - len(a) })
}

// Printf is go-redis's call for one log line.
func (l *redisLogger) Printf(_ context.Context, format string, v ...any) {
	if !l.every.Allow() {
		l.dropped.Add(1)
		return
	}
	msg := l.redact(strings.TrimSpace(fmt.Sprintf(format, v...)))
	if n := l.dropped.Swap(0); n > 0 {
		l.logger().Warn(msg, zap.Int64("dropped", n))
		return
	}
	l.logger().Warn(msg)
}

// urlUserinfo matches the scheme and userinfo of a URL (scheme://user:pw@).
var urlUserinfo = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@]*@`)

// redact removes every known secret and any URL userinfo from msg.
func (l *redisLogger) redact(msg string) string {
	l.mu.RLock()
	for _, s := range l.secrets {
		msg = strings.ReplaceAll(msg, s, "[redacted]")
	}
	l.mu.RUnlock()
	return urlUserinfo.ReplaceAllString(msg, "${1}[redacted]@")
}
