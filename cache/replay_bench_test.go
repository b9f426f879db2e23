package cache

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRedisReplayFirstUse is the replay store's share of a DPoP request:
// one SET NX of a fresh key, serially and from 32 goroutines (the load
// generator's connections). cpu-ns/op is the process's CPU time per call
// (user+system): the client's work and the syscalls, not the wait.
func BenchmarkRedisReplayFirstUse(b *testing.B) {
	client := testRedis(b)
	prefix := testPrefix(b, client)
	store := NewRedisReplay(client, RedisReplayOptions{Prefix: prefix, Breaker: NewBreaker("redis")})
	ctx := context.Background()
	ttl := 21 * time.Second
	var n atomic.Int64
	// work stands for the rest of a request (an ES256 verification is about
	// 60µs of CPU): with it, the replay calls of 32 goroutines interleave
	// as they do in the gateway rather than all queueing at once.
	var work func()
	run := func(b *testing.B, parallel bool) {
		b.ReportAllocs()
		c0 := cpuTime()
		if parallel {
			b.SetParallelism(16) // 32 goroutines on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if work != nil {
						work()
					}
					if fresh, err := store.FirstUse(ctx, strconv.FormatInt(n.Add(1), 36), time.Now(), ttl); err != nil || !fresh {
						b.Error(fresh, err)
						return
					}
				}
			})
		} else {
			for b.Loop() {
				if fresh, err := store.FirstUse(ctx, strconv.FormatInt(n.Add(1), 36), time.Now(), ttl); err != nil || !fresh {
					b.Fatal(fresh, err)
				}
			}
		}
		b.ReportMetric(float64((cpuTime()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel32", func(b *testing.B) { run(b, true) })
	work = spin(60 * time.Microsecond)
	b.Run("parallel32+60us", func(b *testing.B) { run(b, true) })
	work = nil
	b.Run("work-only-60us", func(b *testing.B) {
		w := spin(60 * time.Microsecond)
		c0 := cpuTime()
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				w()
			}
		})
		b.ReportMetric(float64((cpuTime()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	})
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// spin returns a function that burns about d of CPU, calibrated once per
// process on the fastest of a few probes (the machine may be shared).
func spin(d time.Duration) func() {
	spinOnce.Do(func() {
		const probe = 1 << 20
		best := time.Duration(1<<63 - 1)
		for range 5 {
			t0 := time.Now()
			spinN(probe)
			best = min(best, time.Since(t0))
		}
		spinPerNs = float64(probe) / float64(best)
	})
	n := int(spinPerNs * float64(d))
	return func() { spinN(n) }
}

var (
	spinOnce  sync.Once
	spinPerNs float64
	spinSink  atomic.Uint64
)

func spinN(n int) {
	x := uint64(n)
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	spinSink.Add(x)
}
