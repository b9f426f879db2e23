package redistopo

import (
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
)

// redisServerPath finds redis-server on PATH or fails the test: the tests
// that use this package are meant to run wherever they are run (CI installs
// redis-server), so a missing binary is an error, never a skip.
func redisServerPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistopo: redis-server is not on PATH (%v); install Redis 7 (apt-get install redis-server) to run this test", err)
	}
	return p
}

// ports remembers every port handed out by freePort in this process, so
// two servers of one test binary never get the same one.
var ports = struct {
	sync.Mutex
	used map[int]bool
}{used: map[int]bool{}}

// freePort returns a loopback port the OS reported free. Another process
// may take it before redis-server binds it: starters retry on "Address
// already in use".
func freePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("redistopo: finding a free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		ports.Lock()
		fresh := !ports.used[p]
		ports.used[p] = true
		ports.Unlock()
		if fresh {
			return p, nil
		}
	}
	return 0, fmt.Errorf("redistopo: no fresh free port in 100 tries")
}

// spawner starts every child process from one OS thread that never exits.
// Pdeathsig fires when the thread that started the child ends, not the
// process; from a thread the Go runtime could retire, a redis-server could
// be killed in the middle of a test.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

// spawn starts cmd in its own process group (so Kill reaches a fork for
// replication too) with SIGKILL as its parent-death signal (so an
// interrupted or crashed test binary leaves no redis-server behind).
func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawner.reqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	req := spawnReq{cmd: cmd, err: make(chan error, 1)}
	spawner.reqs <- req
	return <-req.err
}
