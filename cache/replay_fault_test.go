package cache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/redistopo"
)

func TestEpochStep(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	const skew, window = 5 * time.Second, 21 * time.Second
	known := epochKnowledge{seen: true, gen: 3, runID: "A"}
	marker := func(gen int64, floor time.Time) string { return epochMarker{gen: gen, floor: floor}.String() }
	tests := []struct {
		name      string
		k         epochKnowledge
		in        epochInput
		wantGen   int64
		wantFloor time.Time // zero: none
		wantWrite int
		wantWhy   string
	}{
		{"unchanged", known, epochInput{runID: "A", uptime: time.Hour, present: true, marker: marker(3, time.Time{})}, 3, time.Time{}, markerKeep, ""},
		{"another replica declared a loss", known, epochInput{runID: "A", uptime: time.Hour, present: true, marker: marker(4, now.Add(time.Second))}, 4, now.Add(time.Second), markerKeep, LossDeclaredElsewhere},
		{"marker gone (flush, restart)", known, epochInput{runID: "A", uptime: time.Hour}, 4, now.Add(skew), markerCreate, LossMarkerGone},
		{"marker went back", known, epochInput{runID: "A", uptime: time.Hour, present: true, marker: marker(1, time.Time{})}, 4, now.Add(skew), markerOverwrite, LossMarkerOlder},
		{"another server (failover)", known, epochInput{runID: "B", uptime: time.Hour, present: true, marker: marker(3, time.Time{})}, 4, now.Add(skew), markerOverwrite, LossServerChanged},
		{"restarted, no marker", known, epochInput{runID: "B", uptime: time.Second}, 4, now.Add(skew), markerCreate, LossRestarted},
		{"flushed soon after a restart", known, epochInput{runID: "A", uptime: time.Second}, 4, now.Add(skew), markerCreate, LossMarkerGone},
		{"failed over to a long-running replica", known, epochInput{runID: "B", uptime: time.Hour}, 4, now.Add(skew), markerCreate, LossServerChanged},
		{"failed over to a young replica", known, epochInput{runID: "B", uptime: time.Second, promoted: true, present: true, marker: marker(3, time.Time{})}, 4, now.Add(skew), markerOverwrite, LossServerChanged},
		{"first sight, promoted without a marker", epochKnowledge{}, epochInput{runID: "B", uptime: time.Second, promoted: true}, 1, now.Add(skew), markerCreate, LossMarkerGone},
		{"first sight, a marker from another server (a failover before this process looked)", epochKnowledge{}, epochInput{runID: "B", uptime: time.Hour, promoted: true, present: true, marker: "3/0/A"}, 4, now.Add(skew), markerOverwrite, LossServerChanged},
		{"a marker from this server", known, epochInput{runID: "A", uptime: time.Hour, present: true, marker: "3/0/A"}, 3, time.Time{}, markerKeep, ""},
		{"a marker from another server, this process knew of neither", epochKnowledge{seen: true, gen: 3, runID: "B"}, epochInput{runID: "B", uptime: time.Hour, present: true, marker: "3/0/A"}, 4, now.Add(skew), markerOverwrite, LossServerChanged},
		{"first sight, no marker (a new store or prefix, or a flush before this process looked)", epochKnowledge{}, epochInput{runID: "A", uptime: time.Hour}, 1, now.Add(skew), markerCreate, LossMarkerGone},
		{"first sight, store started within a window", epochKnowledge{}, epochInput{runID: "A", uptime: 3 * time.Second}, 1, now.Add(skew), markerCreate, LossMarkerGone},
		{"first sight, marker with a floor", epochKnowledge{}, epochInput{runID: "A", uptime: time.Hour, present: true, marker: marker(7, now.Add(2*time.Second))}, 7, now.Add(2 * time.Second), markerKeep, LossDeclaredElsewhere},
		{"malformed marker", known, epochInput{runID: "A", uptime: time.Hour, present: true, marker: "x"}, 4, now.Add(skew), markerOverwrite, LossMarkerGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next, m, write, why := epochStep(tt.k, tt.in, now, skew, window)
			if why != tt.wantWhy {
				t.Errorf("why %q, want %q", why, tt.wantWhy)
			}
			if m.gen != tt.wantGen || !m.floor.Equal(tt.wantFloor) || write != tt.wantWrite {
				t.Errorf("epochStep = gen %d floor %v write %d; want gen %d floor %v write %d", m.gen, m.floor, write, tt.wantGen, tt.wantFloor, tt.wantWrite)
			}
			if write != markerKeep && m.runID != tt.in.runID {
				t.Errorf("a marker written without the server's run_id: %+v", m)
			}
			if !next.seen || next.gen != m.gen || next.runID != tt.in.runID {
				t.Errorf("knowledge after: %+v", next)
			}
			if back, ok := parseMarker(m.String()); !ok || back.gen != m.gen || back.runID != m.runID || !back.floor.Equal(m.floor.Truncate(time.Millisecond)) {
				t.Errorf("marker %q does not read back", m.String())
			}
		})
	}
}

// retryHook sends the first pipeline carrying a SET twice, as go-redis does
// when a reply times out after the server executed the command.
type retryHook struct{ done atomic.Bool }

func (h *retryHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *retryHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *retryHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if cmds[0].Name() == "set" && h.done.CompareAndSwap(false, true) {
			_ = next(ctx, cmds) // executed, its reply lost
		}
		return next(ctx, cmds)
	}
}

// TestRedisReplayOwnRetry: a SET that reaches the server twice (a retry
// after a timed-out reply) does not refuse the proof that set the key; a
// proof set by another call is still a replay.
func TestRedisReplayOwnRetry(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: prefix})
	warm(t, s)
	c.AddHook(&retryHook{})
	if fresh, err := s.FirstUse(t.Context(), "jkt:retried", time.Now(), ttl); !fresh || err != nil {
		t.Fatalf("a proof whose SET was retried: FirstUse = %v, %v; want fresh", fresh, err)
	}
	if fresh, err := s.FirstUse(t.Context(), "jkt:retried", time.Now(), ttl); fresh || err != nil {
		t.Fatalf("the same proof again: FirstUse = %v, %v; want a replay", fresh, err)
	}
}

// warm makes s verify its server with one fresh proof.
func warm(t *testing.T, s *RedisReplay) {
	t.Helper()
	if fresh, err := s.FirstUse(t.Context(), "warm-"+time.Now().String(), time.Now(), ttl); !fresh || err != nil {
		t.Fatalf("warm-up: FirstUse = %v, %v", fresh, err)
	}
}

// forgetPrefix deletes every key under prefix: what a FLUSHALL or a restart
// without persistence does to the store's records.
func forgetPrefix(t *testing.T, c redis.UniversalClient, prefix string) {
	t.Helper()
	keys, err := c.Keys(t.Context(), prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		if err := c.Del(t.Context(), keys...).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRedisReplayLostRecords: after Redis lost its records, no proof accepted
// before the loss is accepted again, on the replica that accepted it or on
// another; a proof issued after the loss (and the future skew) is.
func TestRedisReplayLostRecords(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	const skew = 2 * time.Second
	a := NewRedisReplay(c, RedisReplayOptions{Prefix: prefix, FutureSkew: skew})
	b := NewRedisReplay(c, RedisReplayOptions{Prefix: prefix, FutureSkew: skew})
	warm(t, a)
	warm(t, b)
	before := time.Now()
	keys := []string{"jkt:p1", "jkt:p2", "jkt:p3"}
	for _, k := range keys {
		if fresh, err := a.FirstUse(t.Context(), k, before, ttl); !fresh || err != nil {
			t.Fatalf("%s on A: %v %v", k, fresh, err)
		}
	}
	forgetPrefix(t, c, prefix)

	// p1 is replayed to B: B's batch finds the marker gone, declares the loss
	// and refuses. p2 is replayed to A, which learns of the loss from the
	// marker B wrote. p3 went to both: once refused, it stays refused.
	for _, use := range []struct {
		st  *RedisReplay
		key string
	}{{b, "jkt:p1"}, {a, "jkt:p2"}, {b, "jkt:p3"}, {a, "jkt:p3"}, {a, "jkt:p1"}} {
		fresh, err := use.st.FirstUse(t.Context(), use.key, before, ttl)
		if fresh || (err != nil && !errors.Is(err, authz.ErrStoreRecovering)) {
			t.Fatalf("%s replayed after the loss: FirstUse = %v, %v; want ErrStoreRecovering or a replay", use.key, fresh, err)
		}
	}
	// A proof issued after the loss plus the skew is fresh on both.
	after := time.Now().Add(skew + 10*time.Millisecond)
	for i, st := range []*RedisReplay{a, b} {
		k := "jkt:after-" + string(rune('a'+i))
		if fresh, err := st.FirstUse(t.Context(), k, after, ttl); !fresh || err != nil {
			t.Fatalf("a proof issued after the loss: FirstUse = %v, %v; want fresh", fresh, err)
		}
	}
	// A replica started after the loss reads the floor from the marker.
	late := NewRedisReplay(c, RedisReplayOptions{Prefix: prefix, FutureSkew: skew})
	if fresh, err := late.FirstUse(t.Context(), "jkt:p1", before, ttl); fresh || !errors.Is(err, authz.ErrStoreRecovering) {
		t.Fatalf("a replica started after the loss: FirstUse = %v, %v; want ErrStoreRecovering", fresh, err)
	}
}

// TestRedisReplayNewServerIdentity: a connection that reaches a server this
// process has not seen makes the store verify again before it trusts a fresh
// answer; a server whose run_id differs from the marker's declares a loss.
func TestRedisReplayNewServerIdentity(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ids := &ServerIdentities{}
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: prefix, Identities: ids, FutureSkew: time.Second})
	warm(t, s)
	// Pretend the server this process verified was another one, then let a
	// new connection see the real one: as after a failover.
	s.mu.Lock()
	for k, e := range s.epochs {
		e.runID = "gone"
		s.epochs[k] = e
	}
	s.mu.Unlock()
	ids.epoch.Add(1)
	fresh, err := s.FirstUse(t.Context(), "jkt:before", time.Now(), ttl)
	if fresh || !errors.Is(err, authz.ErrStoreRecovering) {
		t.Fatalf("a proof answered by another server: FirstUse = %v, %v; want ErrStoreRecovering", fresh, err)
	}
}

func TestParseServerInfo(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\nuptime_in_seconds:42\r\n" +
		"# Replication\r\nrole:master\r\nsecond_repl_offset:-1\r\n# Memory\r\nmaxmemory_policy:noeviction\r\n"
	si := parseServerInfo(info)
	if si.runID != "abc123" || si.major != 7 || si.uptime != 42*time.Second || si.promoted || si.evicts {
		t.Errorf("parseServerInfo = %+v", si)
	}
	promoted := strings.Replace(strings.Replace(info, "second_repl_offset:-1", "second_repl_offset:1234", 1),
		"noeviction", "allkeys-lru", 1)
	if si := parseServerInfo(promoted); !si.promoted || !si.evicts {
		t.Errorf("a promoted, evicting server read as %+v", si)
	}
}

// failOnceHook fails the next pipeline carrying a SET without sending it, as
// a broken connection would.
type failOnceHook struct{ armed atomic.Bool }

func (h *failOnceHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *failOnceHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *failOnceHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if cmds[0].Name() == "set" && h.armed.CompareAndSwap(true, false) {
			err := errors.New("connection reset by peer")
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		return next(ctx, cmds)
	}
}

// TestRedisReplayVerifiesAfterFailure: after a failed call the store checks
// the server (INFO, the marker) again before it trusts a fresh answer: the
// server behind the failure may be another one.
func TestRedisReplayVerifiesAfterFailure(t *testing.T) {
	c := testRedis(t)
	fail := &failOnceHook{}
	args := &argsHook{}
	c.AddHook(fail)
	c.AddHook(args)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c)})
	warm(t, s)
	infos := func() int {
		args.mu.Lock()
		defer args.mu.Unlock()
		n := 0
		for _, a := range args.args {
			if a[0] == "info" {
				n++
			}
		}
		return n
	}
	before := infos()
	fail.armed.Store(true)
	if fresh, err := s.FirstUse(t.Context(), "jkt:failed", time.Now(), ttl); fresh || err == nil {
		t.Fatalf("a call whose connection failed: FirstUse = %v, %v", fresh, err)
	}
	if fresh, err := s.FirstUse(t.Context(), "jkt:next", time.Now(), ttl); !fresh || err != nil {
		t.Fatalf("the next call: FirstUse = %v, %v", fresh, err)
	}
	if infos() != before+1 {
		t.Fatalf("%d INFO commands after the failure, want 1: the store trusted a server it had not checked again", infos()-before)
	}
}

// TestRedisReplayRefusesEvictingRedis: a Redis that may evict keys under
// memory pressure could drop a replay record silently; the store refuses to
// vouch for fresh proofs there, with an error that says why.
func TestRedisReplayRefusesEvictingRedis(t *testing.T) {
	srv := redistopo.StartSingle(t)
	if err := srv.Client().ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: "hg:"})
	fresh, err := s.FirstUse(t.Context(), "jkt:evicting", time.Now(), ttl)
	if fresh || !errors.Is(err, errEvicting) {
		t.Fatalf("FirstUse on an evicting Redis = %v, %v; want errEvicting", fresh, err)
	}
}

// timeoutOnceHook lets the next pipeline carrying a SET reach the server,
// then reports it as timed out: the reply was lost on its way back.
type timeoutOnceHook struct{ armed atomic.Bool }

func (h *timeoutOnceHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *timeoutOnceHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *timeoutOnceHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if cmds[0].Name() == "set" && h.armed.CompareAndSwap(true, false) {
			for _, c := range cmds {
				c.SetErr(context.DeadlineExceeded)
			}
			return context.DeadlineExceeded
		}
		return err
	}
}

// TestRedisReplayTimeoutRetried: a SET whose reply timed out after the
// server executed it is sent once more and finds its own value: the proof
// is fresh, not refused, and not a replay.
func TestRedisReplayTimeoutRetried(t *testing.T) {
	c := testRedis(t)
	hook := &timeoutOnceHook{}
	c.AddHook(hook)
	s := NewRedisReplay(c, RedisReplayOptions{Prefix: testPrefix(t, c)})
	warm(t, s)
	hook.armed.Store(true)
	if fresh, err := s.FirstUse(t.Context(), "jkt:slow", time.Now(), ttl); !fresh || err != nil {
		t.Fatalf("a proof whose first reply timed out: FirstUse = %v, %v; want fresh", fresh, err)
	}
	if hook.armed.Load() {
		t.Fatal("the hook never saw the SET")
	}
	if fresh, err := s.FirstUse(t.Context(), "jkt:slow", time.Now(), ttl); fresh || err != nil {
		t.Fatalf("the same proof again: FirstUse = %v, %v; want a replay", fresh, err)
	}
}
