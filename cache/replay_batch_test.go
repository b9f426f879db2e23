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

// gateHook holds the first command or pipeline a client sends once armed
// until open is closed, so that the calls made meanwhile queue behind it; it
// counts pipelines and the commands they carry.
type gateHook struct {
	open      chan struct{}
	armed     atomic.Bool
	first     atomic.Bool
	pipelines atomic.Int32
	piped     atomic.Int32
	largest   atomic.Int32
}

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.gate()
		return next(ctx, cmd)
	}
}

func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.gate()
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

// gate holds the first command or pipeline sent once the hook is armed.
func (h *gateHook) gate() {
	if h.armed.Load() && h.first.CompareAndSwap(false, true) {
		<-h.open
	}
}

// warmGated makes s verify its server (one fresh proof), then arms hook: the
// next command s sends is held.
func warmGated(t *testing.T, s *RedisReplay, hook *gateHook) {
	t.Helper()
	if ok, err := s.FirstUse(t.Context(), "warm", time.Now(), ttl); err != nil || !ok {
		t.Fatalf("warm-up: %v %v", ok, err)
	}
	hook.pipelines.Store(0)
	hook.largest.Store(0)
	hook.armed.Store(true)
}

// TestRedisReplayBatches: calls made while one is out are sent together in
// one pipeline, and each gets its own answer: exactly one fresh per key.
func TestRedisReplayBatches(t *testing.T) {
	c := testRedis(t)
	hook := &gateHook{open: make(chan struct{})}
	c.AddHook(hook)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c), Breaker: NewBreaker("redis"), Timeout: time.Second})
	warmGated(t, s, hook)

	const callers = 200 // distinct keys, and every key twice
	var (
		wg    sync.WaitGroup
		fresh sync.Map
		nOK   atomic.Int32
	)
	first := make(chan struct{})
	wg.Go(func() { // the gated call: the others queue behind it
		close(first)
		if ok, err := s.FirstUse(t.Context(), "gate", time.Now(), ttl); err != nil || !ok {
			t.Errorf("gate: %v %v", ok, err)
		}
	})
	<-first
	for i := range 2 * callers {
		wg.Go(func() {
			key := fmt.Sprintf("jkt:jti-%d", i%callers)
			ok, err := s.FirstUse(t.Context(), key, time.Now(), ttl)
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
		s.single.mu.Lock()
		queued := len(s.single.queue)
		s.single.mu.Unlock()
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
	s.single.mu.Lock()
	defer s.single.mu.Unlock()
	if s.single.sending || len(s.single.queue) != 0 {
		t.Fatalf("the store is not idle after the calls: sending %v, %d queued", s.single.sending, len(s.single.queue))
	}
}

// TestRedisReplayBatchFailure: when Redis is down or the breaker is open,
// every call of a batch gets the error, and none waits forever.
func TestRedisReplayBatchFailure(t *testing.T) {
	br := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
	s := NewRedisReplay(deadRedis(t), RedisReplayOptions{Prefix: "helsegate-test:", Breaker: br, Timeout: 200 * time.Millisecond})
	var wg sync.WaitGroup
	var failed, open atomic.Int32
	for i := range 50 {
		wg.Go(func() {
			fresh, err := s.FirstUse(t.Context(), fmt.Sprint("k", i), time.Now(), ttl)
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
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c), Breaker: NewBreaker("redis"), Timeout: time.Second})
	warmGated(t, s, hook)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = s.FirstUse(t.Context(), "gate", time.Now(), ttl) })
	for !hook.first.Load() {
		time.Sleep(time.Millisecond)
	}
	// The first queued call leads the next batch; its caller goes away.
	ctx, cancel := context.WithCancel(t.Context())
	var leaderErr error
	wg.Go(func() { _, leaderErr = s.FirstUse(ctx, "leader", time.Now(), ttl) })
	waitQueued(s, 1)
	var others atomic.Int32
	for i := range 10 {
		wg.Go(func() {
			if ok, err := s.FirstUse(t.Context(), fmt.Sprint("other-", i), time.Now(), ttl); err == nil && ok {
				others.Add(1)
			}
		})
	}
	waitQueued(s, 11)
	cancel()
	close(hook.open)
	wg.Wait()
	if others.Load() != 10 {
		t.Fatalf("%d of 10 calls batched with a canceled one succeeded", others.Load())
	}
	_ = leaderErr // either answer is fine for the caller that left
}

// TestRedisReplayAbandonedWaiter: a caller queued behind a batch that does
// not come back leaves when its request ends; the calls queued after it are
// still sent and answered.
func TestRedisReplayAbandonedWaiter(t *testing.T) {
	c := testRedis(t)
	hook := &gateHook{open: make(chan struct{})}
	c.AddHook(hook)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c), Breaker: NewBreaker("redis"), Timeout: 5 * time.Second})
	warmGated(t, s, hook)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = s.FirstUse(t.Context(), "gate", time.Now(), ttl) })
	for !hook.first.Load() {
		time.Sleep(time.Millisecond)
	}
	queued := func(n int) { waitQueued(s, n) }
	ctx, cancel := context.WithCancel(t.Context())
	left := make(chan error, 1)
	go func() { _, err := s.FirstUse(ctx, "leaves", time.Now(), ttl); left <- err }()
	queued(1)
	var later atomic.Int32
	wg.Go(func() {
		if ok, err := s.FirstUse(t.Context(), "later", time.Now(), ttl); err == nil && ok {
			later.Add(1)
		}
	})
	queued(2)
	cancel()
	select {
	case err := <-left:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the caller that left got %v, want its context's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a caller whose request ended still waits for the batch ahead")
	}
	close(hook.open) // the batch ahead comes back
	wg.Wait()
	if later.Load() != 1 {
		t.Fatal("the call queued after the one that left was not answered")
	}
	s.single.mu.Lock()
	defer s.single.mu.Unlock()
	if s.single.sending || len(s.single.queue) != 0 {
		t.Fatalf("the store is not idle: sending %v, %d queued", s.single.sending, len(s.single.queue))
	}
}

// TestRedisReplayOpenBreakerFailsAtOnce: with the breaker open, calls fail
// without queueing and without sending anything.
func TestRedisReplayOpenBreakerFailsAtOnce(t *testing.T) {
	c := testRedis(t)
	hook := &gateHook{open: make(chan struct{})} // would hold the first command sent
	defer close(hook.open)
	hook.armed.Store(true)
	c.AddHook(hook)
	br := NewBreaker("redis", WithHalfOpenAfter(time.Hour))
	for br.State() != "open" {
		_ = br.Do(t.Context(), func(context.Context) error { return errors.New("down") })
	}
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c), Breaker: br, Timeout: 5 * time.Second})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := s.FirstUse(t.Context(), fmt.Sprint("k", i), time.Now(), ttl); !errors.Is(err, ErrBreakerOpen) {
				t.Errorf("FirstUse with the breaker open: %v, want ErrBreakerOpen", err)
			}
		})
	}
	wg.Wait()
	if hook.first.Load() {
		t.Fatal("a command was sent with the breaker open")
	}
}

// TestRedisReplayHalfOpenProbeAlone: while the half-open breaker's probe is
// out (and held), other calls are refused at once instead of queueing
// behind it.
func TestRedisReplayHalfOpenProbeAlone(t *testing.T) {
	c := testRedis(t)
	hook := &gateHook{open: make(chan struct{})}
	hook.armed.Store(true)
	c.AddHook(hook)
	br := NewBreaker("redis", WithHalfOpenAfter(10*time.Millisecond))
	for br.State() != "open" {
		_ = br.Do(t.Context(), func(context.Context) error { return errors.New("down") })
	}
	for br.State() != "half-open" {
		time.Sleep(5 * time.Millisecond)
	}
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c), Breaker: br, Timeout: 5 * time.Second})
	probe := make(chan error, 1)
	go func() { _, err := s.FirstUse(t.Context(), "probe", time.Now(), ttl); probe <- err }()
	for !hook.first.Load() {
		time.Sleep(time.Millisecond)
	}
	refused := make(chan error, 10)
	for i := range 10 {
		go func() { _, err := s.FirstUse(t.Context(), fmt.Sprint("k", i), time.Now(), ttl); refused <- err }()
	}
	for range 10 {
		select {
		case err := <-refused:
			if !errors.Is(err, ErrBreakerOpen) {
				t.Errorf("a call beside the probe: %v, want ErrBreakerOpen", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a call waits behind the half-open probe")
		}
	}
	close(hook.open)
	if err := <-probe; err != nil {
		t.Fatalf("the probe: %v", err)
	}
}

// waitQueued waits until n calls wait in s's queue.
func waitQueued(s *RedisReplay, n int) {
	for {
		s.single.mu.Lock()
		q := len(s.single.queue)
		s.single.mu.Unlock()
		if q == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
