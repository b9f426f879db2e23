package integration

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpProxy is a TCP proxy in front of Redis that the test can kill.
type tcpProxy struct {
	addr   string
	target string

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startProxy forwards a loopback port to target until Close.
func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{addr: ln.Addr().String(), target: target}
	p.serveOn(ln)
	t.Cleanup(p.Close)
	return p
}

func (p *tcpProxy) Addr() string { return p.addr }

func (p *tcpProxy) serveOn(ln net.Listener) {
	p.mu.Lock()
	p.ln, p.conns, p.closed = ln, map[net.Conn]struct{}{}, false
	p.mu.Unlock()
	p.wg.Add(1)
	go p.serve(ln)
}

// Restart listens again on the same address, as a Redis that comes back.
func (p *tcpProxy) Restart(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("restarting the Redis proxy on %s: %v", p.addr, err)
	}
	p.serveOn(ln)
}

func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) serve(ln net.Listener) {
	defer p.wg.Done()
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(in) || !p.track(out) {
			_ = in.Close()
			_ = out.Close()
			return
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// Close stops listening and kills every connection, as a Redis that dies.
func (p *tcpProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
