package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

var errDown = errors.New("dependency down")

// call names what one call through the breaker does.
type call int

const (
	fail       call = iota // the dependency fails
	succeed                // the dependency answers
	gone                   // the caller's context ends while the call runs
	ownTimeout             // the call's own timeout expires, caller still waiting
)

// run makes one call of kind c through b.
func run(b *Breaker, c call) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	return b.Do(ctx, func(ctx context.Context) error {
		switch c {
		case fail:
			return errDown
		case gone:
			cancel()
			return ctx.Err()
		case ownTimeout:
			return context.DeadlineExceeded
		}
		return nil
	})
}

func TestBreakerCounting(t *testing.T) {
	tests := []struct {
		name  string
		calls []call
		want  BreakerState
	}{
		{"four failures stay closed", []call{fail, fail, fail, fail}, "closed"},
		{"five failures open", []call{fail, fail, fail, fail, fail}, "open"},
		{"a success resets the run", []call{fail, fail, fail, fail, succeed, fail}, "closed"},
		{"the caller going away is not a failure", []call{gone, gone, gone, gone, gone, gone, gone}, "closed"},
		{"nor a success", []call{fail, fail, fail, fail, gone, gone, fail}, "open"},
		{"the call's own timeout is a failure", []call{ownTimeout, ownTimeout, ownTimeout, ownTimeout, ownTimeout}, "open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBreaker("test")
			for _, c := range tt.calls {
				_ = run(b, c)
			}
			if got := b.State(); got != tt.want {
				t.Errorf("State() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBreakerOpenRefusesWithoutCalling(t *testing.T) {
	b := NewBreaker("redis")
	for range BreakerFailures {
		if err := run(b, fail); !errors.Is(err, errDown) {
			t.Fatalf("closed breaker returned %v, want the dependency's error", err)
		}
	}
	called := false
	err := b.Do(context.Background(), func(context.Context) error { called = true; return nil })
	if called || !errors.Is(err, ErrBreakerOpen) {
		t.Errorf("open breaker: called %v, err %v", called, err)
	}
	if err.Error() != "cache: circuit breaker open: redis" {
		t.Errorf("error %q", err)
	}
}

func TestBreakerDeadCallerDoesNotRun(t *testing.T) {
	b := NewBreaker("test")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := b.Do(ctx, func(context.Context) error { called = true; return nil })
	if called || !errors.Is(err, context.Canceled) {
		t.Errorf("called %v, err %v", called, err)
	}
}

// halfOpen returns a breaker that is half-open right after it opens, and
// the transitions it has made.
func halfOpen(t *testing.T) (*Breaker, func() []string) {
	t.Helper()
	var (
		mu    sync.Mutex
		trans []string
	)
	b := NewBreaker("test",
		WithHalfOpenAfter(time.Nanosecond),
		WithStateChange(func(name string, from, to BreakerState) {
			if name != "test" {
				t.Errorf("state change of %q", name)
			}
			mu.Lock()
			trans = append(trans, string(from)+">"+string(to))
			mu.Unlock()
		}))
	for range BreakerFailures {
		_ = run(b, fail)
	}
	if got := b.State(); got != "half-open" {
		t.Fatalf("State() = %q, want half-open", got)
	}
	return b, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(trans)
	}
}

func TestBreakerHalfOpen(t *testing.T) {
	tests := []struct {
		name  string
		probe []call
		want  []string
	}{
		{"a good probe closes", []call{succeed}, []string{"closed>open", "open>half-open", "half-open>closed"}},
		{"a failed probe reopens", []call{fail}, []string{"closed>open", "open>half-open", "half-open>open"}},
		{"an abandoned probe decides nothing", []call{gone, gone}, []string{"closed>open", "open>half-open"}},
		{"then the next probe decides", []call{gone, succeed}, []string{"closed>open", "open>half-open", "half-open>closed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, transitions := halfOpen(t)
			for _, c := range tt.probe {
				_ = run(b, c)
			}
			if got := transitions(); !slices.Equal(got, tt.want) {
				t.Errorf("transitions %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBreakerNil(t *testing.T) {
	var b *Breaker
	if err := run(b, fail); !errors.Is(err, errDown) {
		t.Errorf("err %v", err)
	}
	if b.State() != "closed" || b.Name() != "" {
		t.Errorf("State %q Name %q", b.State(), b.Name())
	}
}
