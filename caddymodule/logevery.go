package caddymodule

import (
	"sync/atomic"
	"time"
)

// logEvery lets a log line through at most once per interval, for what can
// happen on every request while a dependency is down.
type logEvery struct {
	interval time.Duration
	last     atomic.Int64 // unix nanoseconds of the last line let through
}

func (l *logEvery) allow() bool {
	now := time.Now().UnixNano()
	last := l.last.Load()
	if now-last < int64(l.interval) {
		return false
	}
	return l.last.CompareAndSwap(last, now)
}
