package main

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// redisProc is the soak's own redis-server on a fixed loopback port, with
// persistence off (--save "" --appendonly no), so that a restart comes back
// empty, as a Redis without persistence does after a crash.
type redisProc struct {
	bin, addr, dir string
	starts         int
	proc           *child
}

// newRedis picks a free port; start starts the server.
func newRedis(dir string) (*redisProc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not installed (apt-get install redis-server): %w", err)
	}
	addr, err := gatewayproc.FreeAddr()
	if err != nil {
		return nil, err
	}
	return &redisProc{bin: bin, addr: addr, dir: dir}, nil
}

// start runs redis-server and waits (at most 10 s) until it answers PING.
// It returns when the PONG came.
func (r *redisProc) start() (time.Time, error) {
	r.starts++
	logf := filepath.Join(r.dir, fmt.Sprintf("redis-%d.log", r.starts))
	cmd := exec.Command(r.bin, "--bind", "127.0.0.1", "--port", port(r.addr), "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--logfile", logf)
	p, err := startChild("redis-server", cmd)
	if err != nil {
		return time.Time{}, err
	}
	r.proc = p
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := r.ping(); err == nil {
			return time.Now(), nil
		} else if time.Now().After(deadline) || !p.alive() {
			p.kill()
			return time.Time{}, fmt.Errorf("redis-server on %s did not answer: %v\n%s", r.addr, err, gatewayproc.Tail(logf, 10))
		}
		// 20 ms: the recovery times are measured from this PONG, so poll
		// finely; a PING costs Redis nothing.
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs the server: no shutdown, no save.
func (r *redisProc) kill() {
	if r.proc != nil {
		r.proc.kill()
	}
}

// ping sends PING on a new connection and expects +PONG (a new connection,
// so that it says whether the server accepts connections now).
func (r *redisProc) ping() error {
	c, err := net.DialTimeout("tcp", r.addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}
