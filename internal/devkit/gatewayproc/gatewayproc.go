// Package gatewayproc runs one helsegate process on a Caddyfile, for the
// end-to-end tests (integration/) and the tools (hgbench, hgsoak): it writes
// the Caddyfile, starts the binary on it (directly or under a wrapper such
// as valgrind), waits until the admin endpoint and every site answer, loads
// new configs through the admin endpoint, reads the process's log, and stops
// it, gracefully first. What a caller measures or renders beyond that (CPU
// samples, profiles, the sites of its Caddyfile) stays with the caller.
//
// It runs the built binary rather than Caddy in-process (caddytest.Tester),
// so that the tests and tools see what a deployment runs: the process with
// its command line, environment, logs, CPU time and exit.
package gatewayproc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Defaults of Options.
const (
	defaultName         = "helsegate"
	defaultReadyTimeout = 30 * time.Second
)

// How long Stop and Kill wait: for the graceful exit after SIGINT, then for
// the process to be reaped after SIGKILL.
const (
	stopGrace = 5 * time.Second
	reapWait  = 10 * time.Second
)

// Options say how to start one process. Bin, Dir and Admin are required.
type Options struct {
	// Name names the process in errors ("gateway", "replica 1"); default
	// "helsegate".
	Name string
	// Bin is the helsegate binary.
	Bin string
	// Wrapper is a command and its arguments that run Bin (valgrind …);
	// none runs Bin directly.
	Wrapper []string
	// Dir is the working directory.
	Dir string
	// Caddyfile, when set, is written to ConfigPath, and the process runs
	// `run --config ConfigPath --adapter caddyfile`.
	Caddyfile string
	// ConfigPath is where Caddyfile is written; default Dir/Caddyfile.
	ConfigPath string
	// Args, when set, are the arguments after Bin instead of `run --config …`.
	Args []string
	// OutPath receives the process's stdout and stderr; default
	// Dir/stderr.log.
	OutPath string
	// LogPath is the JSON log that LogTail and LogEntries read; default
	// OutPath (Caddy logs to stderr unless the Caddyfile says otherwise).
	LogPath string
	// Home is the process's HOME, XDG_DATA_HOME and XDG_CONFIG_HOME, so that
	// Caddy's storage and autosaved config stay in the run's directory;
	// default Dir. It is created when missing.
	Home string
	// Environ, when set, is the whole environment instead of os.Environ()
	// with Home's three variables.
	Environ []string
	// Env is added to the environment.
	Env []string
	// Admin is the admin endpoint's host:port, Addrs the sites'. Start
	// returns once the admin endpoint answers GET /config/ and every site
	// accepts connections.
	Admin string
	Addrs []string
	// ReadyTimeout bounds that wait; default 30 s.
	ReadyTimeout time.Duration
	// OwnGroup starts the process in a process group of its own, so that a
	// terminal's Ctrl-C reaches the caller only and the caller decides the
	// order of shutdown; Kill then kills the whole group.
	OwnGroup bool
}

// Process is one running helsegate process.
type Process struct {
	name     string
	admin    string
	addrs    []string
	outPath  string
	logPath  string
	ownGroup bool
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error // set before exited is closed
}

// Start starts the process and waits until it is ready (see Options). On
// Linux the process gets SIGKILL when the caller dies, so that nothing
// outlives a killed test run or tool. When the process does not come up, it
// is killed, and the error carries the tail of its output and log.
func Start(ctx context.Context, o Options) (*Process, error) {
	o.setDefaults()
	if o.Caddyfile != "" {
		if err := os.WriteFile(o.ConfigPath, []byte(o.Caddyfile), 0o600); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(o.Home, 0o700); err != nil {
		return nil, err
	}
	out, err := os.Create(o.OutPath)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := o.command()
	cmd.Stdout, cmd.Stderr = out, out
	setProcAttr(cmd, o.OwnGroup)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", o.Name, err)
	}
	p := &Process{name: o.Name, admin: o.Admin, addrs: o.Addrs, outPath: o.OutPath, logPath: o.LogPath,
		ownGroup: o.OwnGroup, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx, o.ReadyTimeout); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%w\n%s", err, p.tails(40))
	}
	return p, nil
}

func (o *Options) setDefaults() {
	if o.Name == "" {
		o.Name = defaultName
	}
	if o.ConfigPath == "" {
		o.ConfigPath = filepath.Join(o.Dir, "Caddyfile")
	}
	if o.OutPath == "" {
		o.OutPath = filepath.Join(o.Dir, "stderr.log")
	}
	if o.LogPath == "" {
		o.LogPath = o.OutPath
	}
	if o.Home == "" {
		o.Home = o.Dir
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = defaultReadyTimeout
	}
}

// command builds the command line and environment.
func (o *Options) command() *exec.Cmd {
	args := o.Args
	if args == nil {
		args = []string{"run", "--config", o.ConfigPath, "--adapter", "caddyfile"}
	}
	argv := append(append(append([]string{}, o.Wrapper...), o.Bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = o.Dir
	env := o.Environ
	if env == nil {
		env = append(os.Environ(), "HOME="+o.Home, "XDG_DATA_HOME="+o.Home, "XDG_CONFIG_HOME="+o.Home)
	}
	cmd.Env = append(append([]string{}, env...), o.Env...)
	return cmd
}

// tails is the last n lines of the output and, when it is another file,
// of the log, for an error message.
func (p *Process) tails(n int) string {
	s := fmt.Sprintf("--- output (%s) ---\n%s", p.outPath, Tail(p.outPath, n))
	if p.logPath != p.outPath {
		s += fmt.Sprintf("\n--- log (%s) ---\n%s", p.logPath, Tail(p.logPath, n))
	}
	return s
}

// Pid is the process id (of the wrapper, when there is one), for reading
// the process's CPU time and memory from /proc.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Admin is the admin endpoint's host:port.
func (p *Process) Admin() string { return p.admin }

// LogPath is the JSON log's path.
func (p *Process) LogPath() string { return p.logPath }

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Alive reports whether the process has not exited.
func (p *Process) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// ExitErr is the process's exit error (nil for status 0); valid once
// Exited is closed, nil before.
func (p *Process) ExitErr() error {
	if p.Alive() {
		return nil
	}
	return p.waitErr
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop stops the process gracefully (SIGINT: Caddy stops its servers and
// cleans up its modules), kills it when it has not exited after a grace
// period, and waits for it (bounded). A process that has exited is left
// alone.
func (p *Process) Stop() {
	if !p.Alive() {
		return
	}
	if p.Signal(os.Interrupt) == nil {
		select {
		case <-p.exited:
			return
		case <-time.After(stopGrace):
		}
	}
	p.Kill()
}

// Kill sends SIGKILL (to the process group with Options.OwnGroup) and waits
// (bounded) for the process to be reaped.
func (p *Process) Kill() {
	if !p.Alive() {
		return
	}
	kill(p.cmd, p.ownGroup)
	select {
	case <-p.exited:
	case <-time.After(reapWait):
	}
}
