package registrysim

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/loopback"
)

// LookupPattern is the route of contract v1, as a net/http pattern.
const LookupPattern = "GET /v1/organizations/{orgnr}/services/{service}"

// Document is the members file format: the same objects as the
// 200 body of contract v1.
type Document struct {
	Authorizations []authz.Authorization `json:"authorizations"`
}

// ReadDocument reads and decodes a members file. Unknown fields are
// refused, as the gateway's file source refuses them.
func ReadDocument(path string) (Document, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Document{}, fmt.Errorf("registrysim: members file: %w", err)
	}
	doc, err := decodeDocument(b)
	if err != nil {
		return Document{}, fmt.Errorf("registrysim: members file %s: %w", path, err)
	}
	return doc, nil
}

// DecodeDocument decodes a members file held in memory, as strictly as
// ReadDocument: unknown fields and trailing data are refused.
func DecodeDocument(data []byte) (Document, error) {
	doc, err := decodeDocument(data)
	if err != nil {
		return Document{}, fmt.Errorf("registrysim: members document: %w", err)
	}
	return doc, nil
}

func decodeDocument(data []byte) (Document, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return Document{}, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Document{}, errors.New("data after the top-level object")
	}
	return doc, nil
}

// Options configures Start.
type Options struct {
	// Addr is the listen address. Default "127.0.0.1:0". The host must be a
	// loopback IP or "localhost" (which means 127.0.0.1); anything else,
	// including an empty host, is refused.
	Addr string
	// Members are the authorizations served from the start.
	Members []authz.Authorization
	// MembersFile, when set, is a members file read once by Start; its
	// authorizations are loaded before Members (which win on a clash).
	MembersFile string
	// Token, when set, is required of every lookup as
	// "Authorization: Bearer <Token>"; any other request gets 401.
	Token string
}

// Failure is how the simulator misbehaves; see None, Status, Slow, Down, Hang.
type Failure struct {
	kind   failureKind
	status int
	delay  time.Duration
}

type failureKind int

const (
	kindNone failureKind = iota
	kindStatus
	kindSlow
	kindDown
	kindHang
)

// None answers normally.
func None() Failure { return Failure{} }

// Status answers every lookup with code (e.g. 503, 429) and a small JSON
// body.
func Status(code int) Failure { return Failure{kind: kindStatus, status: code} }

// Slow waits d before answering normally, or until the caller gives up
// (the request's context ends), whichever comes first.
func Slow(d time.Duration) Failure { return Failure{kind: kindSlow, delay: d} }

// Down closes every lookup's connection without an answer, as a crashing
// registry or a dropping load balancer would: the caller sees a connection
// error.
func Down() Failure { return Failure{kind: kindDown} }

// Hang holds every lookup without an answer until the failure is changed
// (SetFailure) to anything but Hang, then answers it as the new failure
// says, or until the caller gives up. Held reports how many it holds.
func Hang() Failure { return Failure{kind: kindHang} }

// String is for test logs.
func (f Failure) String() string {
	switch f.kind {
	case kindStatus:
		return fmt.Sprintf("status %d", f.status)
	case kindSlow:
		return "slow " + f.delay.String()
	case kindDown:
		return "down"
	case kindHang:
		return "hang"
	default:
		return "none"
	}
}

// key names one authorization.
type key struct{ service, org string }

// Server is a running simulator. Its methods are safe for concurrent use.
type Server struct {
	url   string
	token string
	srv   *loopback.Server

	calls atomic.Int64
	held  atomic.Int64

	mu      sync.Mutex
	members map[key]authz.Authorization
	failure Failure
	changed chan struct{} // closed and replaced by every SetFailure
}

// Start loads the members, listens on opts.Addr and serves in the
// background until Close.
func Start(opts Options) (*Server, error) {
	addr, err := loopback.Addr("registrysim", opts.Addr)
	if err != nil {
		return nil, err
	}
	s := &Server{token: opts.Token, members: map[key]authz.Authorization{}, changed: make(chan struct{})}
	if opts.MembersFile != "" {
		doc, err := ReadDocument(opts.MembersFile)
		if err != nil {
			return nil, err
		}
		for _, a := range doc.Authorizations {
			s.Set(a)
		}
	}
	for _, a := range opts.Members {
		s.Set(a)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("registrysim: listen: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		_ = ln.Close()
		return nil, fmt.Errorf("registrysim: %s is not a loopback address", ln.Addr())
	}
	s.url = "http://" + ln.Addr().String()

	mux := http.NewServeMux()
	mux.HandleFunc(LookupPattern, s.handleLookup)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such route (contract v1: " + LookupPattern + ")"})
	})
	s.srv = loopback.Serve(ln, mux)
	return s, nil
}

// URL returns the base URL to configure as the gateway's registry, e.g.
// "http://127.0.0.1:40123" (no trailing slash).
func (s *Server) URL() string { return s.url }

// Close stops the listener, drops every connection (slow answers in flight
// end) and waits for the serve loop to end.
func (s *Server) Close() error { return s.srv.Close() }

// Set adds or replaces the authorization of a.Organization for a.Service.
func (s *Server) Set(a authz.Authorization) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members[key{a.Service, a.Organization}] = clone(a)
}

// Remove deletes the authorization of org for service: lookups get 404.
func (s *Server) Remove(org, service string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.members, key{service, org})
}

// SetFailure makes every later lookup fail as f says (None to recover).
// Lookups already waiting in Slow keep their delay; lookups held by Hang are
// answered as f says.
func (s *Server) SetFailure(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failure = f
	close(s.changed)
	s.changed = make(chan struct{})
}

// Calls returns how many lookups reached the simulator since Start, failed,
// slow, held and refused ones included.
func (s *Server) Calls() int64 { return s.calls.Load() }

// Held returns how many lookups Hang holds now.
func (s *Server) Held() int64 { return s.held.Load() }

// current returns the failure in force and a channel closed when it
// changes.
func (s *Server) current() (Failure, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failure, s.changed
}

// handleLookup serves contract v1.
func (s *Server) handleLookup(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	f, changed := s.current()
	if f.kind == kindHang {
		s.held.Add(1)
		for f.kind == kindHang && r.Context().Err() == nil {
			select {
			case <-r.Context().Done():
			case <-changed:
				f, changed = s.current()
			}
		}
		s.held.Add(-1)
		if r.Context().Err() != nil {
			return
		}
	}

	switch f.kind {
	case kindDown:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "simulated outage"})
		return
	case kindStatus:
		if f.status == http.StatusTooManyRequests || f.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, f.status, map[string]string{"error": "simulated failure"})
		return
	case kindSlow:
		t := time.NewTimer(f.delay)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}

	if s.token != "" && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="registrysim"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized"})
		return
	}

	s.mu.Lock()
	a, ok := s.members[key{r.PathValue("service"), r.PathValue("orgnr")}]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no authorization"})
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// authorized reports whether r carries the bearer token.
func (s *Server) authorized(r *http.Request) bool {
	got := r.Header.Values("Authorization")
	if len(got) != 1 {
		return false
	}
	want := "Bearer " + s.token
	return subtle.ConstantTimeCompare([]byte(got[0]), []byte(want)) == 1
}

// clone copies a so that the caller's later changes do not reach the
// simulator.
func clone(a authz.Authorization) authz.Authorization {
	if a.ValidFrom != nil {
		t := *a.ValidFrom
		a.ValidFrom = &t
	}
	if a.ValidTo != nil {
		t := *a.ValidTo
		a.ValidTo = &t
	}
	return a
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
