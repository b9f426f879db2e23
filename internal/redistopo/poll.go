package redistopo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// pollInterval is the pause between two checks of a condition: short,
	// since every wait here ends on a state change that takes milliseconds
	// to a few seconds, and the checks are a handful of loopback commands.
	pollInterval = 25 * time.Millisecond

	// attemptTimeout bounds one check, so a server that hangs (paused,
	// stopped, half dead) costs one attempt, not the whole wait.
	attemptTimeout = 2 * time.Second

	// startTimeout bounds the wait for a started redis-server to answer.
	// It answers in milliseconds when idle; the margin is for a 2-core
	// machine busy with builds and other tests.
	startTimeout = 20 * time.Second

	// formTimeout bounds the wait for a topology to settle (replicas in
	// sync, sentinels aware of each other, cluster_state:ok): about 1-3 s
	// idle, generous for a loaded machine.
	formTimeout = 60 * time.Second
)

// stopPolling wraps an error after which poll gives up at once (a process
// that exited will not answer later).
type stopPolling struct{ error }

func (e stopPolling) Unwrap() error { return e.error }

// poll calls check until it returns nil, returns a stopPolling error, or
// ctx ends. check gets a context bounded by attemptTimeout and reports
// why the condition does not hold yet; the last reason is in poll's error.
func poll(ctx context.Context, what string, check func(ctx context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := check(actx)
		cancel()
		if err == nil {
			return nil
		}
		var stop stopPolling
		if errors.As(err, &stop) {
			return fmt.Errorf("%s: %w", what, stop.error)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: gave up (%w); last check: %v", what, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// adminOptions are the options of the harness's own clients: one attempt
// per command (the polls retry; a test sees the fault it injected) and
// no CLIENT SETINFO, which Redis 7.0 does not know.
func adminOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		DialTimeout:           2 * time.Second,
		DialerRetries:         1,
		ReadTimeout:           5 * time.Second,
		WriteTimeout:          5 * time.Second,
		MaxRetries:            -1,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
	}
}

// infoField returns the value of field in an INFO reply ("" if absent).
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// tailFile returns the last n lines of a file, for failure messages.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
