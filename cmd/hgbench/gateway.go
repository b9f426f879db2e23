package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// readyTimeout bounds the gateway's start, run directly.
const readyTimeout = 30 * time.Second

// launch says how the gateway process is started: directly (the zero
// value), or under a wrapper such as valgrind, with more environment and a
// longer start.
type launch struct {
	wrapper []string // command and arguments before the helsegate binary
	env     []string // added to the environment
	ready   time.Duration
}

// gateway is the one helsegate process under test.
type gateway struct {
	cmd     *exec.Cmd
	admin   string
	logPath string
	exited  chan struct{}
	waitErr error
}

// startGateway writes caddyfile into dir and runs `bin run --config` on
// it, waiting until the admin endpoint answers and every site in addrs
// accepts connections. The process gets SIGKILL if hgbench dies.
func startGateway(ctx context.Context, l launch, bin, dir, caddyfile, admin, logPath string, addrs []string) (*gateway, error) {
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(caddyfile), 0o600); err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(dir, "helsegate.out"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	g := &gateway{admin: admin, logPath: logPath, exited: make(chan struct{})}
	args := append(append([]string{}, l.wrapper...), bin, "run", "--config", cfg, "--adapter", "caddyfile")
	g.cmd = exec.Command(args[0], args[1:]...)
	g.cmd.Dir = dir
	g.cmd.Stdout, g.cmd.Stderr = out, out
	// Caddy's data and config directories stay in the run's directory.
	g.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	g.cmd.Env = append(g.cmd.Env, l.env...)
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	ready := l.ready
	if ready <= 0 {
		ready = readyTimeout
	}
	if err := g.waitReady(ctx, addrs, ready); err != nil {
		g.stop()
		return nil, fmt.Errorf("%w\n--- output (%s) ---\n%s\n--- log ---\n%s", err, out.Name(), tail(out.Name(), 30), tail(logPath, 30))
	}
	return g, nil
}

func (g *gateway) waitReady(ctx context.Context, addrs []string, readyTimeout time.Duration) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-g.exited:
			return fmt.Errorf("helsegate exited during start: %v", g.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		err := g.probe(c, addrs)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("helsegate not ready after %s: %v", readyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gateway) probe(c *http.Client, addrs []string) error {
	resp, err := c.Get("http://" + g.admin + "/config/")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin /config/: %s", resp.Status)
	}
	for _, a := range addrs {
		conn, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return err
		}
		conn.Close()
	}
	return nil
}

// pid is the gateway's process id.
func (g *gateway) pid() int { return g.cmd.Process.Pid }

// cpu samples the gateway's utime+stime so far, with hgbench's and the
// machine's.
func (g *gateway) cpu() (cpuSample, error) {
	select {
	case <-g.exited:
		return cpuSample{}, fmt.Errorf("helsegate exited: %v (log: %s)", g.waitErr, g.logPath)
	default:
	}
	return sampleCPU(g.pid())
}

// stop kills the process and waits for it (bounded).
func (g *gateway) stop() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
	}
}

// cpuProfile fetches a CPU profile of seconds from the admin endpoint's
// /debug/pprof/profile into path.
func (g *gateway) cpuProfile(ctx context.Context, seconds int, path string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.admin, seconds), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("pprof: %s: %s", resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// collect makes the gateway run a full garbage collection now, through the
// admin endpoint's heap profile (?gc=1 collects before the profile).
func (g *gateway) collect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.admin+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return fmt.Errorf("collection through the admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("collection through the admin endpoint: %s", resp.Status)
	}
	return nil
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
