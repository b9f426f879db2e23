package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerFailures is the number of consecutive failures that opens a Breaker.
const BreakerFailures = 5

// DefaultHalfOpenAfter is how long a Breaker stays open before it lets one
// probe call through.
const DefaultHalfOpenAfter = 5 * time.Second

// BreakerState is a Breaker's state. Its value is the name that logs,
// metrics and the health report show.
type BreakerState string

// The states of a Breaker.
const (
	// BreakerClosed runs every call.
	BreakerClosed BreakerState = "closed"
	// BreakerOpen refuses every call until the half-open delay has passed.
	BreakerOpen BreakerState = "open"
	// BreakerHalfOpen lets one probe through and refuses the others.
	BreakerHalfOpen BreakerState = "half-open"
)

// breakerState names gobreaker's state.
func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	default:
		return BreakerClosed
	}
}

// ErrBreakerOpen is returned, wrapped, by Breaker.Do when the breaker refuses
// the call without running it: open, or half-open with its probe in flight.
var ErrBreakerOpen = errors.New("cache: circuit breaker open")

// Breaker is a circuit breaker around one dependency (Redis, the membership
// registry), so that a dead dependency costs microseconds, not a timeout per
// request. It opens after BreakerFailures consecutive failures, lets one
// probe through after the half-open delay, and closes when the probe
// succeeds. It is a thin wrapper around sony/gobreaker; a nil *Breaker runs
// every call and never opens.
type Breaker struct {
	cb *gobreaker.CircuitBreaker[struct{}]
	// Wall-clock time (UnixNano) of the last call that succeeded and of the
	// last that failed, for health reports.
	okAt   atomic.Int64
	failAt atomic.Int64
}

// BreakerOption configures NewBreaker.
type BreakerOption func(*breakerSettings)

// breakerSettings keeps gobreaker's type out of the exported API.
type breakerSettings struct{ gobreaker.Settings }

// WithHalfOpenAfter sets how long the breaker stays open before a probe
// (default DefaultHalfOpenAfter). Values <= 0 keep the default.
func WithHalfOpenAfter(d time.Duration) BreakerOption {
	return func(s *breakerSettings) {
		if d > 0 {
			s.Timeout = d
		}
	}
}

// WithStateChange registers fn to be told of every state change, with the
// breaker's name and the states, for logs and metrics. fn runs while the
// breaker holds its lock: it must be quick and must not call the breaker.
func WithStateChange(fn func(name string, from, to BreakerState)) BreakerOption {
	return func(s *breakerSettings) {
		s.OnStateChange = func(name string, from, to gobreaker.State) {
			fn(name, breakerState(from), breakerState(to))
		}
	}
}

// NewBreaker returns a closed breaker called name (the name is bounded: use
// it as a metric label, never put a key or an organization in it).
func NewBreaker(name string, opts ...BreakerOption) *Breaker {
	s := breakerSettings{gobreaker.Settings{
		Name:    name,
		Timeout: DefaultHalfOpenAfter,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			// gobreaker's default trips after more than 5.
			return c.ConsecutiveFailures >= BreakerFailures
		},
		// A call abandoned by its caller says nothing about the dependency.
		// Excluded rather than counted as a success: a success would reset
		// the failure run and, on a half-open probe, close the breaker on a
		// dependency that may still be dead.
		IsExcluded: func(err error) bool {
			var gone callerGone
			return errors.As(err, &gone)
		},
	}}
	for _, o := range opts {
		o(&s)
	}
	return &Breaker{cb: gobreaker.NewCircuitBreaker[struct{}](s.Settings)}
}

// Name returns the name given to NewBreaker.
func (b *Breaker) Name() string {
	if b == nil {
		return ""
	}
	return b.cb.Name()
}

// LastSuccess returns when a call through the breaker last succeeded (zero:
// never, or a nil Breaker).
func (b *Breaker) LastSuccess() time.Time {
	if b == nil {
		return time.Time{}
	}
	return unixNano(b.okAt.Load())
}

// LastFailure returns when a call through the breaker last failed or was
// refused (zero: never, or a nil Breaker).
func (b *Breaker) LastFailure() time.Time {
	if b == nil {
		return time.Time{}
	}
	return unixNano(b.failAt.Load())
}

func unixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// State returns the breaker's state (a nil Breaker is closed).
func (b *Breaker) State() BreakerState {
	if b == nil {
		return BreakerClosed
	}
	return breakerState(b.cb.State())
}

// Do runs fn with ctx through the breaker and returns fn's error. When the
// breaker refuses the call, fn does not run and the error wraps
// ErrBreakerOpen. Any error of fn counts as a dependency failure, except when
// ctx itself is done by then: the caller went away or ran out of time, and
// that call is not counted at all. fn should derive its own timeout from ctx;
// that timeout expiring is a failure of the dependency.
func (b *Breaker) Do(ctx context.Context, fn func(context.Context) error) error {
	if b == nil {
		return fn(ctx)
	}
	if err := ctx.Err(); err != nil {
		return err // do not take a half-open probe slot for a dead request
	}
	_, err := b.cb.Execute(func() (struct{}, error) {
		err := fn(ctx)
		if err != nil && ctx.Err() != nil {
			err = callerGone{err}
		}
		return struct{}{}, err
	})
	var gone callerGone
	switch {
	case err == nil:
		b.okAt.Store(time.Now().UnixNano())
		return nil
	case errors.As(err, &gone):
		return gone.err
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		b.failAt.Store(time.Now().UnixNano())
		return fmt.Errorf("%w: %s", ErrBreakerOpen, b.cb.Name())
	default:
		b.failAt.Store(time.Now().UnixNano())
		return err
	}
}

// callerGone marks an error that happened after the caller's context ended.
type callerGone struct{ err error }

func (e callerGone) Error() string { return e.err.Error() }
func (e callerGone) Unwrap() error { return e.err }
