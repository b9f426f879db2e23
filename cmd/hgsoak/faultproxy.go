package main

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// Modes of a faultProxy.
const (
	modePass = iota // forward to the target
	mode503         // answer 503 at once, with Retry-After
	modeHang        // hold the request until the caller gives up (bounded by maxHang)
)

// maxHang bounds how long a hanging proxy holds one request, in case a
// caller never gives up (the gateway's registry timeout is 1 s): every
// goroutine of the soak ends.
const maxHang = 30 * time.Second

// faultProxy is an HTTP reverse proxy in front of a simulator, on a fixed
// loopback address, that can answer 503, hang, or go down (stop listening:
// connections are refused). The simulators stay untouched.
type faultProxy struct {
	name   string
	addr   string
	target *url.URL
	mode   atomic.Int32
	hangs  chan struct{} // closed to release hanging requests

	mu  sync.Mutex
	srv *http.Server // nil while down
	rp  *httputil.ReverseProxy
}

// startFaultProxy listens on a free loopback port and forwards to target.
func startFaultProxy(name, target string) (*faultProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	addr, err := gatewayproc.FreeAddr()
	if err != nil {
		return nil, err
	}
	p := &faultProxy{name: name, addr: addr, target: u, hangs: make(chan struct{})}
	p.rp = httputil.NewSingleHostReverseProxy(u)
	p.rp.Transport = &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 30 * time.Second}
	return p, p.up()
}

// URL is the proxy's base URL.
func (p *faultProxy) URL() string { return "http://" + p.addr }

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p.mode.Load() {
	case mode503:
		w.Header().Set("Retry-After", "1")
		http.Error(w, `{"error":"injected 503"}`, http.StatusServiceUnavailable)
		return
	case modeHang:
		p.mu.Lock()
		release := p.hangs
		p.mu.Unlock()
		t := time.NewTimer(maxHang)
		defer t.Stop()
		select {
		case <-r.Context().Done():
		case <-release:
		case <-t.C:
		}
		return // the caller sees its own timeout, or an empty answer
	}
	p.rp.ServeHTTP(w, r)
}

// setMode switches between modePass, mode503 and modeHang (leaving
// modeHang releases the held requests).
func (p *faultProxy) setMode(m int32) {
	if old := p.mode.Swap(m); old == modeHang && m != modeHang {
		p.mu.Lock()
		close(p.hangs)
		p.hangs = make(chan struct{})
		p.mu.Unlock()
	}
}

// up listens again on the proxy's address.
func (p *faultProxy) up() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	// The port was ours a moment ago; a few tries in case the kernel has
	// not let it go yet.
	for range 50 {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	go func(s *http.Server) { _ = s.Serve(ln) }(p.srv)
	return nil
}

// down stops listening and drops every open connection: the next
// connection is refused.
func (p *faultProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		_ = p.srv.Close()
		p.srv = nil
	}
}

// close stops the proxy for good.
func (p *faultProxy) close() {
	p.setMode(modePass)
	p.down()
}
