package helseidsim

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/loopback"
)

// Paths served by the simulator, relative to the issuer.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/.well-known/openid-configuration/jwks"
	TokenPath     = "/connect/token"
	// RotatePath rotates the signing key on command (POST); not a HelseID endpoint.
	RotatePath = "/simulator/rotate"
)

// dpopAlgs are the proof algorithms HelseID advertises in
// dpop_signing_alg_values_supported, in HelseID's order.
var dpopAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// Options configures Start.
type Options struct {
	// Addr is the listen address. Default "127.0.0.1:0". The host must be a
	// loopback IP or "localhost" (which means 127.0.0.1); anything else,
	// including an empty host, is refused.
	Addr string
	// Clock returns the current time for token timestamps and the token
	// endpoint's proof iat check. Default time.Now. Proofs made by
	// dpopclient use the real clock unless their IssuedAt is set.
	Clock func() time.Time
}

// Server is a running simulator. Its methods are safe for concurrent use.
type Server struct {
	issuer string
	clock  func() time.Time
	srv    *loopback.Server

	outage      atomic.Bool
	jwksFetches atomic.Int64

	mu      sync.Mutex
	keys    []*signingKey // every key ever made, oldest first
	current *signingKey
	seenJTI map[string]time.Time // DPoP proof jti replay cache

	subKey []byte // HMAC key of the sub pseudonyms, random per simulator
}

type signingKey struct {
	kid       string
	priv      *rsa.PrivateKey
	published bool
}

// Start generates a first signing key, listens on opts.Addr and serves in
// the background until Close.
func Start(opts Options) (*Server, error) {
	addr, err := loopback.Addr("helseidsim", opts.Addr)
	if err != nil {
		return nil, err
	}
	clock := opts.Clock
	if clock == nil {
		clock = time.Now
	}
	s := &Server{clock: clock, seenJTI: map[string]time.Time{}, subKey: make([]byte, 32)}
	if _, err := rand.Read(s.subKey); err != nil {
		return nil, fmt.Errorf("helseidsim: %w", err)
	}
	if _, err := s.Rotate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("helseidsim: listen: %w", err)
	}
	s.issuer = "http://" + ln.Addr().String()

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+DiscoveryPath, s.handleDiscovery)
	mux.HandleFunc("GET "+JWKSPath, s.handleJWKS)
	mux.HandleFunc("POST "+TokenPath, s.handleToken)
	mux.HandleFunc("POST "+RotatePath, s.handleRotate)
	s.srv = loopback.Serve(ln, mux)
	return s, nil
}

// Close stops the listener and waits for the serve loop to end.
func (s *Server) Close() error { return s.srv.Close() }

// Issuer returns the exact iss of every token, e.g. "http://127.0.0.1:40123"
// (no trailing slash).
func (s *Server) Issuer() string { return s.issuer }

// DiscoveryURL returns the OpenID discovery document URL.
func (s *Server) DiscoveryURL() string { return s.issuer + DiscoveryPath }

// JWKSURI returns the JWKS URL advertised as jwks_uri.
func (s *Server) JWKSURI() string { return s.issuer + JWKSPath }

// TokenEndpoint returns the token endpoint URL; it is also the htu a proof
// for the token endpoint must carry.
func (s *Server) TokenEndpoint() string { return s.issuer + TokenPath }

// SetOutage makes discovery and JWKS answer 503 while down is true. The
// token endpoint keeps working.
func (s *Server) SetOutage(down bool) { s.outage.Store(down) }

// JWKSFetches returns how many JWKS GET requests reached the simulator,
// including those answered 503 during an outage.
func (s *Server) JWKSFetches() int64 { return s.jwksFetches.Load() }

func (s *Server) now() time.Time { return s.clock() }

func (s *Server) handleDiscovery(w http.ResponseWriter, _ *http.Request) {
	if s.outage.Load() {
		http.Error(w, "simulated outage", http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                s.issuer,
		"jwks_uri":                              s.JWKSURI(),
		"token_endpoint":                        s.TokenEndpoint(),
		"grant_types_supported":                 []string{"client_credentials"},
		"dpop_signing_alg_values_supported":     dpopAlgs,
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
}

func (s *Server) handleJWKS(w http.ResponseWriter, _ *http.Request) {
	s.jwksFetches.Add(1)
	if s.outage.Load() {
		http.Error(w, "simulated outage", http.StatusServiceUnavailable)
		return
	}
	set, err := s.publicSet()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}

// handleRotate rotates the signing key on command (helsegate dev), answering
// {"kid": "<the new kid>"}.
func (s *Server) handleRotate(w http.ResponseWriter, _ *http.Request) {
	kid, err := s.Rotate()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"kid": kid})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
