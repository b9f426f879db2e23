// Package caddymodule is the Caddy glue of helsegate: the http.handlers.helseid
// module and its Caddyfile directive. It translates configuration, calls authz
// and cache, maps denials to responses and sets the upstream headers and
// placeholders. The verification itself lives in package authz.
package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler verifies, on every request, a HelseID access token and its DPoP
// proof (RFC 9068, RFC 9449) and the token policy of the route, then passes
// the request on with the caller's verified identity in X-Helseid-* headers.
//
// A request that fails a check gets 400, 401, 403 or 503 with the
// WWW-Authenticate challenge of RFC 9449 §7 and an application/problem+json
// body; when the server has error routes (handle_errors), the handler returns
// a caddyhttp.HandlerError instead and leaves the body to them.
//
// Placeholders set on success: {http.auth.user.id} (sub, else client_id;
// never the pid), {http.auth.user.client_id}, {http.auth.user.org_parent},
// {http.auth.user.org_child}, {http.auth.user.org_supplier},
// {http.auth.user.token_kind}, {http.auth.user.security_level},
// {http.auth.user.hpr_number} and {http.auth.user.jkt}.
type Handler struct {
	// The issuer, exactly as the iss claim carries it. Discovery is read from
	// <issuer>/.well-known/openid-configuration. Required; https unless loopback.
	Issuer string `json:"issuer,omitempty"`
	// Overrides the jwks_uri from discovery. https unless loopback.
	JWKSURL string `json:"jwks_url,omitempty"`
	// The audience the token's aud must contain. Required.
	Audience string `json:"audience,omitempty"`
	// When true, aud must be exactly [audience] (Kjernejournal's rule).
	SingleAudience bool `json:"single_audience,omitempty"`
	// Scopes the token must all carry (scope as a JSON array or a string).
	Scopes []string `json:"scopes,omitempty"`
	// Accepted access-token typ values, case-insensitive. Default: at+jwt application/at+jwt jwt.
	TokenTypes []string `json:"token_types,omitempty"`
	// Accepted access-token algorithms. Default: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512.
	Algorithms []string `json:"algorithms,omitempty"`
	// Leeway for exp and nbf. Default: 5s.
	ClockSkew caddy.Duration `json:"clock_skew,omitempty"`

	// "required" (default) or "optional": optional lets a token WITHOUT cnf
	// come as Bearer; a token with cnf must always come as DPoP.
	DPoP string `json:"dpop,omitempty"`
	// Accepted proof algorithms. Default: the same nine as algorithms.
	DPoPAlgorithms []string `json:"dpop_algorithms,omitempty"`
	// Oldest acceptable proof iat. Default: 15s.
	DPoPMaxAge caddy.Duration `json:"dpop_max_age,omitempty"`
	// Newest acceptable proof iat. Default: 5s.
	DPoPFutureSkew caddy.Duration `json:"dpop_future_skew,omitempty"`
	// Secret that enables stateless server nonces (RFC 9449 §9). Every
	// replica that shares it accepts the others' nonces.
	DPoPNonce string `json:"dpop_nonce,omitempty"`
	// scheme://host[:port] used to build the expected htu. Default: the
	// request's own scheme and Host.
	PublicOrigin string `json:"public_origin,omitempty"`

	// "user" (pid present), "machine" or "any" (default).
	TokenKind string `json:"token_kind,omitempty"`
	// User tokens: helseid://claims/identity/security_level must be at least this (1–4).
	MinSecurityLevel int `json:"min_security_level,omitempty"`
	// User tokens: helseid://claims/hpr/hpr_number must be present.
	RequireHPR bool `json:"require_hpr,omitempty"`

	// Organization authorization against the membership registry (SPEC §5).
	Membership *MembershipConfig `json:"membership,omitempty"`

	// Shared store for replay protection. Absent: an in-process store (one
	// instance only; the log says so once at start).
	Redis *cache.RedisConfig `json:"redis,omitempty"`
	// With Redis unreachable: "local" (default) falls back to the in-process
	// store, "deny" refuses the request with 503.
	OnStoreError string `json:"on_store_error,omitempty"`
	// Pass Authorization and DPoP upstream unchanged. Default: true.
	ForwardToken *bool `json:"forward_token,omitempty"`

	verifier   *authz.Verifier
	membership *authz.MembershipCheck // nil without a membership block
	logger     *zap.Logger
	audit      *zap.Logger
	allowLog   *atomic.Pointer[allowAudit] // see allowAuditLogger; nil before Provision
	challenge  challenges
	poolKeys   []string
	forward    bool
	depLog     *logEvery // dead-dependency lines: at most one per 10 s
	metrics    *helseidMetrics
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.helseid",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves placeholders, fills in defaults and builds the verifier.
// It does no network I/O: keys are fetched and Redis is dialed on first use.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.depLog = &logEvery{interval: 10 * time.Second}
	h.audit = h.logger.Named("audit")
	h.allowLog = new(atomic.Pointer[allowAudit])
	h.metrics = getMetrics()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("helseid: registering metrics: %w", err)
	}
	if err := h.resolvePlaceholders(); err != nil {
		return err
	}
	cfg, err := h.authzConfig()
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("helseid: %w", err)
	}

	keys, err := h.issuerKeys(ctx, cfg)
	if err != nil {
		return err
	}
	rc, err := h.redisClient()
	if err != nil {
		return err
	}
	skew := cfg.DPoPFutureSkew
	if skew == 0 {
		skew = authz.DefaultDPoPFutureSkew
	}
	replay, err := h.replayStore(rc, skew)
	if err != nil {
		return err
	}
	if h.Membership != nil {
		if h.membership, err = h.provisionMembership(ctx, rc); err != nil {
			return err
		}
	}
	h.verifier, err = authz.NewVerifier(cfg, keys, replay, authz.SystemClock)
	if err != nil {
		return fmt.Errorf("helseid: %w", err)
	}
	h.forward = h.ForwardToken == nil || *h.ForwardToken
	h.challenge = newChallenges(h.verifier.Config())
	return nil
}

// Validate checks the configuration after Provision. It only reads.
func (h *Handler) Validate() error {
	if h.verifier == nil {
		return errors.New("helseid: not provisioned")
	}
	switch h.OnStoreError {
	case "", "local", "deny":
	default:
		return fmt.Errorf("helseid: on_store_error must be local or deny, not %q", h.OnStoreError)
	}
	return nil
}

// Cleanup releases the pooled key sources and Redis clients. It is safe after
// a failed Provision.
func (h *Handler) Cleanup() error {
	for _, k := range h.poolKeys {
		_, _ = pool.Delete(k)
	}
	h.poolKeys = nil
	return nil
}

// resolvePlaceholders replaces {env.*} and {file.*} in every string value.
func (h *Handler) resolvePlaceholders() error {
	repl := caddy.NewReplacer()
	resolve := func(s *string) {
		*s = repl.ReplaceKnown(*s, "")
	}
	for _, s := range []*string{&h.Issuer, &h.JWKSURL, &h.Audience, &h.DPoP, &h.DPoPNonce, &h.PublicOrigin, &h.TokenKind, &h.OnStoreError} {
		resolve(s)
	}
	for _, list := range [][]string{h.Scopes, h.TokenTypes, h.Algorithms, h.DPoPAlgorithms} {
		for i := range list {
			resolve(&list[i])
		}
	}
	if h.Redis != nil {
		urlPlaceholder := ""
		if hasPlaceholder(h.Redis.URL) {
			urlPlaceholder = h.Redis.URL
		}
		for _, s := range []*string{&h.Redis.URL, &h.Redis.MasterName, &h.Redis.Username, &h.Redis.Password, &h.Redis.KeyPrefix} {
			resolve(s)
		}
		for i := range h.Redis.Addrs {
			resolve(&h.Redis.Addrs[i])
		}
		// "redis {env.REDIS_URL}" keeps the URL, and any password in it, out
		// of the JSON config. A URL of none means the in-process store, as
		// "redis none" does. A placeholder that resolves to nothing is an
		// error: a replica missing its variable must not quietly lose the
		// replay protection it shares with the others.
		if len(h.Redis.Addrs) == 0 {
			switch {
			case h.Redis.URL == "none":
				h.Redis = nil
			case urlPlaceholder != "" && h.Redis.URL == "":
				return fmt.Errorf(`helseid: redis %s is empty: set it to a Redis URL, or to "none" for the in-process store (one instance only)`, urlPlaceholder)
			}
		}
	}
	return nil
}

// authzConfig translates the module config into authz.Config.
func (h *Handler) authzConfig() (authz.Config, error) {
	cfg := authz.Config{
		Issuer:           h.Issuer,
		JWKSURL:          h.JWKSURL,
		Audience:         h.Audience,
		SingleAudience:   h.SingleAudience,
		Scopes:           h.Scopes,
		TokenTypes:       h.TokenTypes,
		Algorithms:       h.Algorithms,
		ClockSkew:        time.Duration(h.ClockSkew),
		DPoP:             authz.DPoPMode(h.DPoP),
		DPoPAlgorithms:   h.DPoPAlgorithms,
		DPoPMaxAge:       time.Duration(h.DPoPMaxAge),
		DPoPFutureSkew:   time.Duration(h.DPoPFutureSkew),
		PublicOrigin:     h.PublicOrigin,
		TokenKind:        authz.TokenKind(h.TokenKind),
		MinSecurityLevel: h.MinSecurityLevel,
		RequireHPR:       h.RequireHPR,
	}
	if h.DPoPNonce != "" {
		if len(h.DPoPNonce) < 16 {
			return cfg, errors.New("helseid: dpop_nonce secret must be at least 16 characters")
		}
		cfg.NonceSecret = []byte(h.DPoPNonce)
	}
	return cfg, nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	start := time.Now()
	// Inbound copies of the identity headers never reach the upstream (SPEC §6).
	stripIdentityHeaders(r.Header)

	// The context is the current request's: with Caddy's tracing on it
	// carries the request span (Caddy's original-request copy predates it).
	ctx := r.Context()
	var origCopy http.Request
	orig := originalRequest(r, &origCopy)
	p, derr := h.verifier.Verify(ctx, h.authzRequest(r, orig))
	if derr == nil && h.membership != nil {
		derr = h.membership.Check(ctx, p)
	}
	if derr != nil {
		h.metrics.decided(outcomeOf(derr.Kind), derr.Reason, time.Since(start))
		h.auditDenial(ctx, orig, derr)
		return h.deny(w, r, derr)
	}
	h.metrics.decided(outcomeAllow, h.allowReason(), time.Since(start))
	h.auditAllow(ctx, orig, p)
	h.setIdentity(r, p)
	if p.NonceRefresh != "" {
		w.Header().Set("DPoP-Nonce", p.NonceRefresh)
	}
	if !h.forward {
		r.Header.Del("Authorization")
		r.Header.Del("DPoP")
	}
	return next.ServeHTTP(w, r)
}

// originalRequest is the request as the client sent it, before any rewrite
// (handle_path, uri strip_prefix): the URI the client signed in htu. It is
// Caddy's copy, copied into dst (the caller's, so it need not be allocated),
// or r itself when there is none.
func originalRequest(r, dst *http.Request) *http.Request {
	if o, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		*dst = o
		return dst
	}
	return r
}

// authzRequest reads what the verifier needs: method and URI from the
// original request, credentials from the current one.
func (h *Handler) authzRequest(r, orig *http.Request) authz.Request {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return authz.Request{
		Method:        orig.Method,
		Scheme:        scheme,
		Host:          r.Host, // Caddy's copy of the original request has no Host; rewrites keep it
		EscapedPath:   orig.URL.EscapedPath(),
		Authorization: r.Header["Authorization"], // canonical names: the lookups allocate nothing
		DPoP:          r.Header["Dpop"],
		TokenInQuery:  tokenInQuery(orig.URL.RawQuery),
	}
}

// tokenInQuery reports whether the query carries access_token (RFC 6750 §2.3),
// which this gateway never accepts.
func tokenInQuery(raw string) bool {
	if !strings.Contains(raw, "access_token") {
		return false
	}
	q, err := url.ParseQuery(raw)
	return err != nil || q.Has("access_token")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
