package redistopo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// portAttempts is how many times a start picks new ports after losing
	// a port race to another process (rare: one retry is nearly always
	// enough).
	portAttempts = 5

	// haltTimeout bounds the wait for a signalled redis-server to exit.
	// SIGKILL takes milliseconds; SIGTERM may take longer, since Redis
	// waits for lagging replicas (shutdown-timeout, 10 s) before exiting.
	haltTimeout = 15 * time.Second
)

// errPortInUse marks a start that failed because another process held one
// of the server's ports.
var errPortInUse = errors.New("port already in use")

// Server is one redis-server process a test started: a data node or a
// sentinel. Its methods fail the test (t.Fatalf) on an error, so call them
// from the test's goroutine.
type Server struct {
	// Addr is the server's "127.0.0.1:port"; Restart keeps it.
	Addr string

	t     testing.TB
	name  string   // the server's role at start, e.g. "replica-1", for messages
	bin   string   // path of redis-server
	dir   string   // the server's own directory: log, config, nodes.conf
	ports []int    // the client port, then the cluster bus port if any
	args  []string // the command line after the binary

	mu     sync.Mutex
	proc   *process // the current process; nil before the first launch
	client *redis.Client
}

// process is one run of a Server's redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has exited and been reaped
}

// String names the server and its address, for messages.
func (s *Server) String() string { return s.name + "@" + s.Addr }

// groupSpec describes n servers started together. args builds the command
// line of server i given its directory and every member's ports (sentinel
// configurations name each other), writing any config file it needs.
type groupSpec struct {
	n      int
	nports int // ports per server: 1, or 2 for a cluster node (client, bus)
	name   func(i int) string
	args   func(i int, dir string, ports [][]int) ([]string, error)
}

// startGroup starts the servers of g under root and waits until each one
// answers. On a lost port race it kills them all and starts again on new
// ports, since members' configurations may refer to each other's ports.
func startGroup(t testing.TB, root string, g groupSpec) []*Server {
	t.Helper()
	bin := redisServerPath(t)
	var err error
	for range portAttempts {
		var servers []*Server
		servers, err = tryStartGroup(t, bin, root, g)
		if err == nil {
			return servers
		}
		for _, s := range servers {
			_ = s.halt(syscall.SIGKILL)
		}
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	t.Fatalf("redistopo: %v", err)
	return nil
}

// tryStartGroup makes one attempt of startGroup. It returns the servers it
// created even on an error, for the caller to kill; each has its cleanup
// registered already.
func tryStartGroup(t testing.TB, bin, root string, g groupSpec) ([]*Server, error) {
	ports := make([][]int, g.n)
	for i := range ports {
		for range g.nports {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			ports[i] = append(ports[i], p)
		}
	}
	servers := make([]*Server, 0, g.n)
	for i := range g.n {
		dir := filepath.Join(root, g.name(i))
		if err := os.RemoveAll(dir); err != nil { // a lost attempt's leftovers
			return servers, err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return servers, err
		}
		args, err := g.args(i, dir, ports)
		if err != nil {
			return servers, err
		}
		s := &Server{
			Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i][0])),
			t:    t, name: g.name(i), bin: bin, dir: dir, ports: ports[i], args: args,
		}
		t.Cleanup(s.cleanup)
		servers = append(servers, s)
		if err := s.launch(); err != nil {
			return servers, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for _, s := range servers {
		if err := s.waitReady(ctx); err != nil {
			return servers, err
		}
	}
	return servers, nil
}

// dataArgs is the command line every data node (not sentinel) shares.
func dataArgs(dir string, port int) []string {
	return []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
		"--save", "",
		"--appendonly", "no",
		// A replica's full sync starts at once instead of after the
		// default 5 s wait for more replicas to batch with.
		"--repl-diskless-sync-delay", "0",
		// DEBUG SLEEP and the like, for tests that want a stalled server.
		"--enable-debug-command", "local",
	}
}

// launch starts the server's process without waiting for it to answer.
func (s *Server) launch() error {
	out, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own descriptor
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := spawn(cmd); err != nil {
		return fmt.Errorf("starting %s: %w", s, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

// current returns the server's current process (nil before the first
// launch).
func (s *Server) current() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// waitReady polls until the server's own process answers PING and INFO:
// the process_id check rules out another process that won a port race.
// Each attempt dials afresh, so no pool state from a previous run of the
// server delays the answer.
func (s *Server) waitReady(ctx context.Context) error {
	p := s.current()
	return poll(ctx, s.String()+" answering", func(ctx context.Context) error {
		select {
		case <-p.done:
			return stopPolling{s.exitError(p)}
		default:
		}
		// A bare dial first: go-redis logs every refused dial, and most
		// attempts before the server listens are refused.
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", s.Addr)
		if err != nil {
			return err
		}
		_ = conn.Close()
		c := redis.NewClient(adminOptions(s.Addr))
		defer c.Close()
		if err := c.Ping(ctx).Err(); err != nil {
			return err
		}
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		if pid := infoField(info, "process_id"); pid != strconv.Itoa(p.cmd.Process.Pid) {
			return fmt.Errorf("process_id %s answered, not ours (%d)", pid, p.cmd.Process.Pid)
		}
		return nil
	})
}

// exitError describes an exited process with the end of its logs; it
// wraps errPortInUse when the process could not bind its port.
func (s *Server) exitError(p *process) error {
	logs := tailFile(filepath.Join(s.dir, "redis.log"), 15) + "\n" + tailFile(filepath.Join(s.dir, "stdout.log"), 5)
	if strings.Contains(logs, "Address already in use") {
		return fmt.Errorf("%s exited: %w", s, errPortInUse)
	}
	return fmt.Errorf("%s exited (%v); log:\n%s", s, p.cmd.ProcessState, logs)
}

// halt sends sig and waits for the process to exit. SIGKILL goes to the
// whole process group, so a fork (a replication snapshot) dies too.
func (s *Server) halt(sig syscall.Signal) error {
	p := s.current()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	pid := p.cmd.Process.Pid
	if sig == syscall.SIGKILL {
		pid = -pid
	}
	_ = syscall.Kill(pid, sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(haltTimeout):
		return fmt.Errorf("%s did not exit within %v of %v", s, haltTimeout, sig)
	}
}

// cleanup kills the server at the end of the test, with the end of its
// log when the test failed.
func (s *Server) cleanup() {
	s.mu.Lock()
	if s.client != nil {
		_ = s.client.Close()
		s.client = nil
	}
	s.mu.Unlock()
	if err := s.halt(syscall.SIGKILL); err != nil {
		s.t.Errorf("redistopo: %v", err)
	}
	if s.t.Failed() && s.current() != nil {
		s.t.Logf("redistopo: %s, end of %s:\n%s", s, filepath.Join(s.dir, "redis.log"), tailFile(filepath.Join(s.dir, "redis.log"), 10))
	}
}

// Kill kills the server with SIGKILL (a crash: no goodbye to clients or
// replicas) and waits for it to exit. Killing a dead server does nothing.
func (s *Server) Kill() {
	s.t.Helper()
	if err := s.halt(syscall.SIGKILL); err != nil {
		s.t.Fatalf("redistopo: %v", err)
	}
}

// Stop shuts the server down with SIGTERM (a clean shutdown: clients see
// their connections closed) and waits for it to exit.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.halt(syscall.SIGTERM); err != nil {
		_ = s.halt(syscall.SIGKILL)
		s.t.Fatalf("redistopo: %v", err)
	}
}

// Restart kills the server if it runs, then starts it again on the same
// port with the same command line and no data (a restart without
// persistence) and waits until it answers PING. A replica syncs again from
// the master on its command line (sentinels move it to the current one); a
// cluster node keeps its nodes.conf, so it rejoins the cluster as the same
// node; a sentinel keeps the configuration it rewrote.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	// Replication snapshots are the only data files (no save, no AOF):
	// without them the server starts empty.
	rdbs, _ := filepath.Glob(filepath.Join(s.dir, "*.rdb"))
	for _, f := range rdbs {
		_ = os.Remove(f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		err := s.launch()
		if err == nil {
			err = s.waitReady(ctx)
		}
		if err == nil {
			return
		}
		// The port stays ours unless another process grabbed it while the
		// server was down: wait for it to be let go.
		if !errors.Is(err, errPortInUse) || ctx.Err() != nil {
			_ = s.halt(syscall.SIGKILL)
			s.t.Fatalf("redistopo: restarting %s: %v", s, err)
		}
		time.Sleep(10 * pollInterval)
	}
}

// Pause makes the server hold every client command for d (CLIENT PAUSE
// <ms> ALL): a Redis that is alive but does not answer, as when it is
// overloaded. Pause returns at once. Replication and the cluster bus go
// on; sentinels are clients, so a pause longer than their
// down-after-milliseconds makes them fail the master over. The server's
// Client waits too (and times out past 5 s).
func (s *Server) Pause(d time.Duration) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
	defer cancel()
	ms := max(d.Milliseconds(), 1)
	if err := s.Client().Do(ctx, "CLIENT", "PAUSE", ms, "ALL").Err(); err != nil {
		s.t.Fatalf("redistopo: pausing %s: %v", s, err)
	}
}

// Client returns the server's admin client, made on first use and closed
// by the cleanup. It makes one attempt per command (no retries), so a test
// sees the fault it injected; it reconnects by itself after a Restart.
func (s *Server) Client() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = redis.NewClient(adminOptions(s.Addr))
	}
	return s.client
}

// RunID returns the server's run_id (INFO server), which changes with
// every start of the process.
func (s *Server) RunID() string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
	defer cancel()
	info, err := s.Client().Info(ctx, "server").Result()
	if err != nil {
		s.t.Fatalf("redistopo: INFO server of %s: %v", s, err)
	}
	return infoField(info, "run_id")
}

// Alive reports whether the server's process runs (it may be paused).
func (s *Server) Alive() bool {
	p := s.current()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// StartSingle starts one standalone redis-server.
func StartSingle(t testing.TB) *Server {
	t.Helper()
	root := t.TempDir()
	return startGroup(t, root, groupSpec{
		n: 1, nports: 1,
		name: func(int) string { return "single" },
		args: func(_ int, dir string, ports [][]int) ([]string, error) {
			return dataArgs(dir, ports[0][0]), nil
		},
	})[0]
}
