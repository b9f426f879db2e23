package registry

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/helsegate/helsegate/authz"
)

// Organization numbers with a valid check digit, and one without.
const (
	orgA       = "917897468"
	orgB       = "974760002"
	orgC       = "974760010"
	orgBadMod  = "917897469"
	testToken  = "s3cr3t-registry-token.abc"
	testSvc    = "kjernejournal"
	testStatus = "active"
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

var _ authz.Clock = (*fakeClock)(nil)

// observed returns a logger that records every entry, Debug and up.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// entryText renders an entry the way an encoder would see it: message,
// every field key and value.
func entryText(e observer.LoggedEntry) string {
	s := e.Message
	for k, v := range e.ContextMap() {
		s += " " + k + "=" + fmt.Sprint(v)
	}
	return s
}

// validOrgs returns n distinct valid organization numbers.
func validOrgs(n int) []string {
	out := make([]string, 0, n)
	for i := 800000000; len(out) < n; i++ {
		if s := strconv.Itoa(i); authz.ValidOrgNumber(s) {
			out = append(out, s)
		}
	}
	return out
}

// Levels the tests filter on.
const (
	zapDebugLevel = zapcore.DebugLevel
	zapErrorLevel = zapcore.ErrorLevel
)
