package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// gateHook holds the first command a client sends until open is closed, so
// that the calls made meanwhile queue behind it; it counts pipelines and the
// commands they carry.
type gateHook struct {
	open      chan struct{}
	first     atomic.Bool
	pipelines atomic.Int32
	piped     atomic.Int32
	largest   atomic.Int32
}

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.first.CompareAndSwap(false, true) {
			<-h.open
		}
		return next(ctx, cmd)
	}
}

func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		h.piped.Add(int32(len(cmds)))
		for n := int32(len(cmds)); ; {
			l := h.largest.Load()
			if n <= l || h.largest.CompareAndSwap(l, n) {
				break
			}
		}
		return next(ctx, cmds)
	}
}

// TestRedisReplayBatches: calls made while one is out are sent together in
// one pipeline, and each gets its own answer: exactly one fresh per key.
func TestRedisReplayBatches(t *testing.T) {
	c := testRedis(t)
	hook := &gateHook{open: make(chan struct{})}
	c.AddHook(hook)
	s := NewRedisReplay(c, testPrefix(t, c), NewBreaker("redis"), time.Second)

	const callers = 200 // distinct keys, and every key twice
	var (
		wg    sync.WaitGroup
		fresh sync.Map
		nOK   atomic.Int32
	)
	first := make(chan struct{})
	wg.Go(func() { // the gated call: the others queue behind it
		close(first)
		if ok, err := s.FirstUse(t.Context(), "gate", ttl); err != nil || !ok {
			t.Errorf("gate: %v %v", ok, err)
		}
	})
	<-first
	for i := range 2 * callers {
		wg.Go(func() {
			key := fmt.Sprintf("jkt:jti-%d", i%callers)
			ok, err := s.FirstUse(t.Context(), key, ttl)
			if err != nil {
				t.Error(err)
				return
			}
			nOK.Add(1)
			if ok {
				if _, dup := fresh.LoadOrStore(key, true); dup {
					t.Errorf("%s was fresh twice", key)
				}
			}
		})
	}
	// Let the callers queue, then let the gated call through.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		queued := len(s.queue)
		s.mu.Unlock()
		if queued == 2*callers || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(hook.open)
	wg.Wait()
	if nOK.Load() != 2*callers {
		t.Fatalf("%d calls answered, want %d", nOK.Load(), 2*callers)
	}
	n := 0
	fresh.Range(func(any, any) bool { n++; return true })
	if n != callers {
		t.Fatalf("%d keys fresh, want %d", n, callers)
	}
	if hook.pipelines.Load() == 0 || hook.largest.Load() < 2 {
		t.Fatalf("no batch was sent: %d pipelines, the largest of %d", hook.pipelines.Load(), hook.largest.Load())
	}
	if hook.largest.Load() > maxReplayBatch {
		t.Fatalf("a batch of %d, over the bound %d", hook.largest.Load(), maxReplayBatch)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sending || len(s.queue) != 0 {
		t.Fatalf("the store is not idle after the calls: sending %v, %d queued", s.sending, len(s.queue))
	}
}

// TestRedisReplayBatchFailure: when Redis is down or the breaker is open,
// every call of a batch gets the error, and none waits forever.
func TestRedisReplayBatchFailure(t *testing.T) {
	br := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
	s := NewRedisReplay(deadRedis(t), "helsegate-test:", br, 200*time.Millisecond)
	var wg sync.WaitGroup
	var failed, open atomic.Int32
	for i := range 50 {
		wg.Go(func() {
			fresh, err := s.FirstUse(t.Context(), fmt.Sprint("k", i), ttl)
			if fresh || err == nil {
				t.Errorf("FirstUse = %v, %v with Redis down", fresh, err)
			}
			failed.Add(1)
			if errors.Is(err, ErrBreakerOpen) {
				open.Add(1)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("calls still waiting")
	}
	if failed.Load() != 50 {
		t.Fatalf("%d of 50 calls failed", failed.Load())
	}
	if br.State() == "open" && open.Load() == 0 {
		t.Log("the breaker opened after the last batch")
	}
}

// TestRedisReplayCanceledCaller: a caller whose request is gone while its
// batch is out still gets an answer, and does not fail the others' batch.
func TestRedisReplayCanceledCaller(t *testing.T) {
	c := testRedis(t)
	hook := &gateHook{open: make(chan struct{})}
	c.AddHook(hook)
	s := NewRedisReplay(c, testPrefix(t, c), NewBreaker("redis"), time.Second)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = s.FirstUse(t.Context(), "gate", ttl) })
	for !hook.first.Load() {
		time.Sleep(time.Millisecond)
	}
	// The first queued call leads the next batch; its caller goes away.
	ctx, cancel := context.WithCancel(t.Context())
	var leaderErr error
	wg.Go(func() { _, leaderErr = s.FirstUse(ctx, "leader", ttl) })
	for {
		s.mu.Lock()
		n := len(s.queue)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	var others atomic.Int32
	for i := range 10 {
		wg.Go(func() {
			if ok, err := s.FirstUse(t.Context(), fmt.Sprint("other-", i), ttl); err == nil && ok {
				others.Add(1)
			}
		})
	}
	for {
		s.mu.Lock()
		n := len(s.queue)
		s.mu.Unlock()
		if n == 11 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	close(hook.open)
	wg.Wait()
	if others.Load() != 10 {
		t.Fatalf("%d of 10 calls batched with a canceled one succeeded", others.Load())
	}
	_ = leaderErr // either answer is fine for the caller that left
}
