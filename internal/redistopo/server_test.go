package redistopo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestSingleRestartLosesData: a restart keeps the address, empties the
// data and changes the run id.
func TestSingleRestartLosesData(t *testing.T) {
	t.Parallel()
	began := time.Now()
	s := StartSingle(t)
	t.Logf("StartSingle: %v", time.Since(began))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	runID, addr := s.RunID(), s.Addr

	began = time.Now()
	s.Restart()
	t.Logf("Restart: %v", time.Since(began))
	if s.Addr != addr || !s.Alive() {
		t.Fatalf("after Restart: Addr %s (was %s), Alive %v", s.Addr, addr, s.Alive())
	}
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after Restart: %v, want redis.Nil", err)
	}
	if id := s.RunID(); id == runID || id == "" {
		t.Fatalf("RunID after Restart: %q, was %q", id, runID)
	}
}

// TestSingleKillStop: Kill and Stop leave the server dead and not
// answering; Restart brings it back either way.
func TestSingleKillStop(t *testing.T) {
	t.Parallel()
	s := StartSingle(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, halt := range []struct {
		name string
		do   func()
	}{{"Kill", s.Kill}, {"Stop", s.Stop}} {
		halt.do()
		if s.Alive() {
			t.Fatalf("Alive after %s", halt.name)
		}
		if err := s.Client().Ping(ctx).Err(); err == nil {
			t.Fatalf("PING answered after %s", halt.name)
		}
		halt.do() // again: a no-op
		s.Restart()
		if err := s.Client().Ping(ctx).Err(); err != nil {
			t.Fatalf("PING after %s and Restart: %v", halt.name, err)
		}
	}
}

// TestSinglePause: a paused server answers nothing for the pause, then
// everything.
func TestSinglePause(t *testing.T) {
	t.Parallel()
	s := StartSingle(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const d = 500 * time.Millisecond
	began := time.Now()
	s.Pause(d)
	if !s.Alive() {
		t.Fatal("not Alive while paused")
	}
	// However late this PING is sent, it cannot be answered before the
	// pause that began after `began` ends.
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after the pause: %v", err)
	}
	if took := time.Since(began); took < d {
		t.Fatalf("PING answered %v after Pause(%v)", took, d)
	}
}

// retry calls f until it succeeds, failing the test when ctx ends: a
// client may need a few attempts to find a new master.
func retry(ctx context.Context, t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	if err := poll(ctx, what, f); err != nil {
		t.Fatal(err)
	}
}

// TestStartRetriesLostPortRace: a server whose port another process holds
// exits, and the start goes on with new ports.
func TestStartRetriesLostPortRace(t *testing.T) {
	t.Parallel()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldPort := held.Addr().(*net.TCPAddr).Port
	attempts := 0
	s := startGroup(t, t.TempDir(), groupSpec{
		n: 1, nports: 1,
		name: func(int) string { return "single" },
		args: func(_ int, dir string, ports [][]int) ([]string, error) {
			attempts++
			if attempts == 1 { // as if another process took our port first
				return dataArgs(dir, heldPort), nil
			}
			return dataArgs(dir, ports[0][0]), nil
		},
	})[0]
	if attempts != 2 {
		t.Fatalf("%d attempts, want 2", attempts)
	}
	if err := s.Client().Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
}

// TestMissingRedisServerFails: without redis-server on PATH the test
// fails with a message saying so (it is not skipped).
func TestMissingRedisServerFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	f := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		redisServerPath(f)
	}()
	<-done
	if !strings.Contains(f.msg, "redis-server is not on PATH") {
		t.Fatalf("Fatalf message %q", f.msg)
	}
}

// fatalRecorder records a Fatalf instead of failing the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
