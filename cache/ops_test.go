package cache

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRedisConfigRedact(t *testing.T) {
	c := RedisConfig{URL: "redis://:p%40ss-word@127.0.0.1:6379/0"}
	err := c.Redact(errors.New("AUTH p@ss-word failed; raw p%40ss-word"))
	if strings.Contains(err.Error(), "ss-word") {
		t.Fatalf("password left in %q", err)
	}
	if c.Redact(nil) != nil {
		t.Fatal("Redact(nil) must be nil")
	}
}

func TestBreakerLastSuccessAndFailure(t *testing.T) {
	var nilBreaker *Breaker
	if !nilBreaker.LastSuccess().IsZero() || !nilBreaker.LastFailure().IsZero() {
		t.Fatal("a nil breaker has no history")
	}
	b := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
	if !b.LastSuccess().IsZero() || !b.LastFailure().IsZero() {
		t.Fatal("a new breaker has no history")
	}
	_ = b.Do(context.Background(), func(context.Context) error { return nil })
	ok := b.LastSuccess()
	if ok.IsZero() || !b.LastFailure().IsZero() {
		t.Fatalf("after a success: %v %v", ok, b.LastFailure())
	}
	_ = b.Do(context.Background(), func(context.Context) error { return errors.New("down") })
	if b.LastFailure().Before(ok) || !b.LastSuccess().Equal(ok) {
		t.Fatalf("after a failure: %v %v", b.LastSuccess(), b.LastFailure())
	}
	// A call abandoned by its caller is neither.
	ctx, cancel := context.WithCancel(context.Background())
	fail := b.LastFailure()
	_ = b.Do(ctx, func(context.Context) error { cancel(); return ctx.Err() })
	if !b.LastFailure().Equal(fail) || !b.LastSuccess().Equal(ok) {
		t.Fatal("an abandoned call changed the history")
	}
}
