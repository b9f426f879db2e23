// Package loopback keeps the test doubles (the HelseID and registry
// simulators) on loopback addresses, and serves them there.
package loopback

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Addr applies the default address 127.0.0.1:0 and refuses any host that is
// not a loopback IP or "localhost" (which becomes 127.0.0.1). who names the
// double in errors.
func Addr(who, addr string) (string, error) {
	if addr == "" {
		return "127.0.0.1:0", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: bad address %q: %w", who, addr, err)
	}
	if host == "localhost" {
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("%s: refusing non-loopback address %q (test double, loopback only)", who, addr)
	}
	return addr, nil
}

// Server serves an http.Handler in the background until Close.
type Server struct {
	srv  *http.Server
	done chan struct{}
}

// Serve serves h on ln in the background.
func Serve(ln net.Listener, h http.Handler) *Server {
	s := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s
}

// Close stops the listener, drops every connection (slow answers in flight
// end) and waits for the serve loop to end.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
