package redistopo

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestSentinelFailover: after KillMaster, WaitFailover returns a former
// replica that takes writes, and a failover client writes again.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	began := time.Now()
	s := StartSentinel(t)
	t.Logf("StartSentinel: %v", time.Since(began))
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	fc := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:      s.MasterName,
		SentinelAddrs:   s.SentinelAddrs(),
		DisableIdentity: true,
	})
	t.Cleanup(func() { _ = fc.Close() })
	if err := fc.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatalf("SET before the failover: %v", err)
	}
	if addr, err := s.CurrentMaster(ctx); err != nil || addr != s.Master.Addr {
		t.Fatalf("CurrentMaster: %s, %v; want %s", addr, err, s.Master.Addr)
	}

	began = time.Now()
	old := s.KillMaster()
	if old != s.Master {
		t.Fatalf("KillMaster killed %s, want the master %s", old, s.Master)
	}
	newAddr, err := s.WaitFailover(ctx, old.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KillMaster to WaitFailover: %v (new master %s)", time.Since(began), newAddr)
	promoted := s.Server(newAddr)
	if !slices.Contains(s.Replicas, promoted) {
		t.Fatalf("new master %s is not one of the replicas", newAddr)
	}
	if err := promoted.Client().Set(ctx, "direct", "1", 0).Err(); err != nil {
		t.Fatalf("SET on the new master: %v", err)
	}

	began = time.Now()
	retry(ctx, t, "SET through the failover client", func(ctx context.Context) error {
		return fc.Set(ctx, "after", "1", 0).Err()
	})
	t.Logf("failover client writing again: %v after WaitFailover", time.Since(began))
}

// TestSentinelWaitFirstNamed: after KillMaster, WaitFirstNamed returns a
// former replica, named after the kill and no later than WaitFailover
// sees every sentinel agree on it.
func TestSentinelWaitFirstNamed(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	old := s.KillMaster()
	killed := time.Now()
	first, at, err := s.WaitFirstNamed(ctx, old.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.Replicas, s.Server(first)) || at.Before(killed) {
		t.Fatalf("WaitFirstNamed: %s at %v after the kill; want a replica, after the kill", first, at.Sub(killed))
	}
	agreed, err := s.WaitFailover(ctx, old.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.Replicas, s.Server(agreed)) {
		t.Fatalf("WaitFailover: %s is not one of the replicas", agreed)
	}
	if agreed != first {
		// A failover attempt that times out is tried again, possibly with
		// the other replica: the first name a sentinel gives may not last.
		t.Logf("WaitFailover: %s, WaitFirstNamed: %s (a failover attempt was retried)", agreed, first)
	}
	t.Logf("%s killed; a sentinel named %s %v later, all agreed %v after that",
		old, first, at.Sub(killed).Round(time.Millisecond), time.Since(at).Round(time.Millisecond))
}
