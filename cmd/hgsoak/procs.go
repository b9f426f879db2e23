package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the soak started. Each runs in its own process group
// (Setpgid), so that the terminal's Ctrl-C reaches the soak only and the
// soak decides the order of shutdown, and gets SIGKILL if the soak dies
// (Pdeathsig), so that nothing outlives it.
type child struct {
	name    string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// children is how to kill every process started (the children and the
// gateway replicas), for the final cleanup.
var children struct {
	mu    sync.Mutex
	kills []func()
}

// register adds a process's kill to the final cleanup.
func register(kill func()) {
	children.mu.Lock()
	children.kills = append(children.kills, kill)
	children.mu.Unlock()
}

// startChild starts cmd as a child of the soak (see child).
func startChild(name string, cmd *exec.Cmd) (*child, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	register(c.kill)
	return c, nil
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// alive reports whether the child has not exited.
func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the child's process group and waits (at most 5 s)
// for it to be reaped.
func (c *child) kill() {
	if !c.alive() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		fmt.Fprintf(os.Stderr, "hgsoak: %s (pid %d) did not exit after SIGKILL\n", c.name, c.pid())
	}
}

// killAll kills every child still running, newest first.
func killAll() {
	children.mu.Lock()
	kills := append([]func(){}, children.kills...)
	children.mu.Unlock()
	for i := len(kills) - 1; i >= 0; i-- {
		kills[i]()
	}
}

// port returns the port of host:port.
func port(hostport string) string {
	return hostport[strings.LastIndexByte(hostport, ':')+1:]
}
