package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// DefaultTimeout bounds one registry call when HTTPConfig.Timeout is zero.
const DefaultTimeout = 2 * time.Second

// SourceRegistry is the Answer.Source of the HTTP source.
const SourceRegistry = "registry"

// configLogEvery is how often, at most, a 401/403 from the registry is
// logged: it is a standing misconfiguration, not a per-request event.
const configLogEvery = time.Minute

// HTTPConfig configures NewHTTP.
type HTTPConfig struct {
	// BaseURL of the registry, e.g. https://medlem.example.no. The contract
	// path /v1/... is appended to it. Absolute https; plain http only for a
	// loopback host. No query, fragment or user info.
	BaseURL string

	// Token, when set, is sent as "Authorization: Bearer <token>". It is
	// never logged and never part of an error.
	Token string

	// Timeout bounds one call, derived from the caller's context.
	// Default DefaultTimeout.
	Timeout time.Duration

	// Client makes the requests. Default: a client of its own with a
	// keep-alive transport (64 idle connections per host), no global
	// timeout (the per-call timeout rules) and no redirects followed.
	Client *http.Client

	// Breaker guards the registry. Default: cache.NewBreaker("registry").
	// Pass one to share it or to watch its state changes.
	Breaker *cache.Breaker

	// Logger receives configuration errors (Error), protocol violations of
	// the registry (Warn) and per-call failures (Debug, the only level that
	// names the organization). Default: no logging.
	Logger *zap.Logger

	// Clock stamps Answer.FetchedAt. Default authz.SystemClock.
	Clock authz.Clock

	// OnCall, when set, is told the result of every Lookup that needed the
	// registry: one of the Call* constants (a closed set, usable as a metric
	// label). It runs on the request path: it must be cheap.
	OnCall func(result string)
}

// Results reported to HTTPConfig.OnCall.
const (
	CallOK          = "ok"           // 200, the record
	CallNotFound    = "not_found"    // 404, a definite no
	CallRefused     = "refused"      // 401/403: our credentials are wrong
	CallError       = "error"        // timeout, connection error, 429, 5xx, a broken answer
	CallBreakerOpen = "breaker_open" // not made: the breaker is open
	CallCanceled    = "canceled"     // the caller went away first
)

// HTTP is the membership registry source: it asks the registry over HTTP
// contract v1 on every Lookup. 200 is the record, 404 a definite no; 401/403
// fail with authz.ErrRegistryConfig and do not count against the breaker;
// everything else (timeout, connection error, 429, 5xx, other 4xx, a body
// that is not the record asked for) fails with authz.ErrRegistryUnavailable
// and counts. It is safe for concurrent use.
type HTTP struct {
	base    string // BaseURL without a trailing slash
	auth    string // "Bearer <token>" or ""
	timeout time.Duration
	client  *http.Client
	breaker *cache.Breaker
	log     *zap.Logger
	clock   authz.Clock
	onCall  func(result string)

	configLog *rate.Limiter // the 401/403 log: one per configLogEvery, by clock
}

var _ authz.Membership = (*HTTP)(nil)

// NewHTTP checks cfg and returns the source. It does no network I/O.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	if err := authz.CheckURL("membership registry URL", cfg.BaseURL); err != nil {
		return nil, err
	}
	if u, _ := url.Parse(cfg.BaseURL); u.User != nil {
		return nil, errors.New("membership registry URL must not carry credentials; use the registry token")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("membership registry timeout must not be negative, got %s", cfg.Timeout)
	}
	if !validToken(cfg.Token) {
		// The token itself stays out of the message.
		return nil, errors.New("membership registry token must be printable ASCII without spaces")
	}
	h := &HTTP{
		base:    strings.TrimRight(cfg.BaseURL, "/"),
		timeout: cfg.Timeout,
		client:  cfg.Client,
		breaker: cfg.Breaker,
		log:     cfg.Logger,
		clock:   cfg.Clock,
		onCall:  cfg.OnCall,
		// A token bucket of one, asked with the injected clock's time:
		// rate.Sometimes would read the wall clock itself.
		configLog: rate.NewLimiter(rate.Every(configLogEvery), 1),
	}
	if cfg.Token != "" {
		h.auth = "Bearer " + cfg.Token
	}
	if h.timeout == 0 {
		h.timeout = DefaultTimeout
	}
	if h.client == nil {
		h.client = defaultClient()
	}
	if h.breaker == nil {
		h.breaker = cache.NewBreaker("registry")
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.clock == nil {
		h.clock = authz.SystemClock
	}
	return h, nil
}

// validToken accepts the empty token and RFC 6750 b64token-like strings:
// visible ASCII only, so the token cannot split or inject a header.
func validToken(tok string) bool {
	for i := 0; i < len(tok); i++ {
		if tok[i] < 0x21 || tok[i] > 0x7e {
			return false
		}
	}
	return true
}

// defaultClient returns the client used when HTTPConfig.Client is nil.
func defaultClient() *http.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
	}
	return &http.Client{
		Transport: tr,
		// A redirect is not part of contract v1: report it, do not follow
		// it (and do not carry the token elsewhere).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Lookup asks the registry whether org is authorized for service. An org that
// is not a valid organization number is a definite no without a call (an
// invalid number never reaches the registry).
func (h *HTTP) Lookup(ctx context.Context, service, org string) (authz.Answer, error) {
	if service == "" || service == "." || service == ".." {
		return authz.Answer{}, fmt.Errorf("%w: invalid service name %q", authz.ErrRegistryConfig, service)
	}
	if !authz.ValidOrgNumber(org) {
		return authz.Answer{FetchedAt: h.clock.Now(), Source: SourceRegistry}, nil
	}
	var (
		ans    authz.Answer
		cfgErr error
	)
	err := h.breaker.Do(ctx, func(ctx context.Context) error {
		a, err := h.fetch(ctx, service, org)
		if errors.Is(err, authz.ErrRegistryConfig) {
			// The registry answered: it is up, and our credentials are
			// wrong. Not an outage, so not a failure for the breaker.
			cfgErr = err
			return nil
		}
		ans = a
		return err
	})
	if h.onCall != nil {
		h.onCall(callResult(ctx, ans, cfgErr, err))
	}
	switch {
	case cfgErr != nil:
		return authz.Answer{}, cfgErr
	case err == nil:
		return ans, nil
	case errors.Is(err, authz.ErrRegistryUnavailable):
		return authz.Answer{}, err
	default:
		// The breaker refused the call, or the caller's context was done
		// before it started.
		return authz.Answer{}, fmt.Errorf("%w: %w", authz.ErrRegistryUnavailable, err)
	}
}

// Breaker returns the breaker that guards the registry, for health reports.
func (h *HTTP) Breaker() *cache.Breaker { return h.breaker }

// BaseURL returns the registry's base URL (it never carries credentials).
func (h *HTTP) BaseURL() string { return h.base }

// callResult classifies one Lookup for OnCall.
func callResult(ctx context.Context, ans authz.Answer, cfgErr, err error) string {
	switch {
	case cfgErr != nil:
		return CallRefused
	case err == nil && ans.Record == nil:
		return CallNotFound
	case err == nil:
		return CallOK
	case errors.Is(err, cache.ErrBreakerOpen):
		return CallBreakerOpen
	case ctx.Err() != nil:
		return CallCanceled
	default:
		return CallError
	}
}
