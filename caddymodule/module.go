// Package caddymodule is the Caddy glue of helsegate: the http.handlers.helseid
// module and its Caddyfile directive. It translates configuration, calls authz
// and cache, maps denials to responses and sets the upstream headers and
// placeholders. The verification itself lives in package authz.
package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

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
// {http.auth.user.hpr_number} and {http.auth.user.jkt}; on routes that read
// the trust-framework attest, from a validated one:
// {http.auth.user.legal_entity}, {http.auth.user.point_of_care},
// {http.auth.user.department}, {http.auth.user.purpose_of_use},
// {http.auth.user.healthcare_service}, {http.auth.user.decision_ref} and
// {http.auth.user.decision_user_selected}. Set on a denial, for the error
// routes: {http.helseid.error} (the problem body's error code) and
// {http.helseid.reason} (the audit entry's reason code); neither ever holds
// a claim value.
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

	// The trust-framework attest (claim nhn:tillitsrammeverk:parameters):
	// "required" (the token must carry one), "optional" (validated when
	// present) or empty (not read). A validated attest's codes and ids go
	// upstream in X-Helseid-* headers and into the audit entry, and its
	// legal entity stands in for a missing orgnr_parent.
	Attest string `json:"attest,omitempty"`
	// Oldest acceptable attest (its toa), rule ATT-58. Default: 60m.
	AttestMaxAge caddy.Duration `json:"attest_max_age,omitempty"`
	// Accepted purpose_of_use codes. Default: TREAT ETREAT COC BTG.
	Purposes []string `json:"purposes,omitempty"`

	// Organization authorization against the membership registry.
	Membership *MembershipConfig `json:"membership,omitempty"`

	// Shared store for replay protection. Absent: an in-process store (one
	// instance only; the log says so once at start).
	Redis *cache.RedisConfig `json:"redis,omitempty"`
	// With Redis unreachable: "local" (default) falls back to the in-process
	// store, "deny" refuses the request with 503.
	OnStoreError string `json:"on_store_error,omitempty"`
	// Remove Authorization and DPoP before passing the request on (the
	// Caddyfile's forward_token off). Default: false, they go upstream unchanged.
	StripToken bool `json:"strip_token,omitempty"`

	// RFC 9728 protected-resource metadata: the handler serves the route's
	// document at its well-known URL and names it in 401 challenges. Absent:
	// no document.
	ResourceMetadata *ResourceMetadata `json:"resource_metadata,omitempty"`

	// The route label of the handler's metrics (caddy_helseid_requests_total,
	// caddy_helseid_verification_duration_seconds): a short name of the
	// protected API, 1 to 64 of a-z A-Z 0-9 _ . -, never a path or anything
	// per caller. Default: the membership service, else "default".
	Route string `json:"route,omitempty"`

	// The HelseID environment, "production" or "test"; the Caddyfile's global
	// option helseid_environment sets it on every handler. Declared, an issuer
	// or jwks_url on a HelseID host of the other environment is a config
	// error. Default: none declared, nothing checked.
	Environment string `json:"environment,omitempty"`

	verifier   *authz.Verifier
	membership *authz.MembershipCheck // nil without a membership block
	logger     *zap.Logger
	audit      *zap.Logger
	allowLog   *atomic.Pointer[allowAudit] // see allowAuditLogger; nil before Provision
	challenge  challenges
	metadata   *resourceMetadata // nil without resource_metadata

	resourceMetadataAt caddyfile.Token // where the Caddyfile said resource_metadata, for its errors
	poolKeys           []string
	depLog             *rate.Limiter // dead-dependency lines: at most one per 10 s
	metrics            *routeMetrics
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
	h.depLog = rate.NewLimiter(rate.Every(10*time.Second), 1)
	h.audit = h.logger.Named("audit")
	route, err := h.routeLabel()
	if err != nil {
		return err
	}
	h.allowLog = new(atomic.Pointer[allowAudit])
	h.metrics = getMetrics().forRoute(route)
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
	if h.ResourceMetadata != nil {
		if h.metadata, err = newResourceMetadata(h.ResourceMetadata, h.verifier.Config(), h.readsAttest()); err != nil {
			return fmt.Errorf("helseid: %w", err)
		}
	}
	h.challenge = newChallenges(h.verifier.Config(), h.metadata)
	return nil
}

// routeLabel is the route label of the handler's metrics: Route, else the
// membership service, else defaultRoute.
func (h *Handler) routeLabel() (string, error) {
	route := h.Route
	if route == "" && h.Membership != nil {
		route = h.Membership.Service
	}
	if route == "" {
		return defaultRoute, nil
	}
	if err := checkRoute(route); err != nil {
		return "", fmt.Errorf("helseid: %w (name it with route <name>)", err)
	}
	return route, nil
}

// Validate checks the configuration after Provision. It only reads.
func (h *Handler) Validate() error {
	if h.verifier == nil {
		return errors.New("helseid: not provisioned")
	}
	if err := cache.ValidateFallbackMode(h.OnStoreError); err != nil {
		return fmt.Errorf("helseid: %w", err)
	}
	return nil
}

// Cleanup releases the pooled key sources and Redis clients. It is safe after
// a failed Provision. They go in the reverse order of Provision: a membership
// cache stops its invalidation subscription before the Redis client under
// it is closed, or the subscription would see its connection closed under
// it and warn of a failure on every clean stop.
func (h *Handler) Cleanup() error {
	for i := len(h.poolKeys) - 1; i >= 0; i-- {
		_, _ = pool.Delete(h.poolKeys[i])
	}
	h.poolKeys = nil
	return nil
}

// resolvePlaceholders replaces {env.*} and {file.*} in every string value
// of the config, the membership block's too: the one place they are
// resolved.
func (h *Handler) resolvePlaceholders() error {
	repl := caddy.NewReplacer()
	resolve := func(s *string) {
		*s = repl.ReplaceKnown(*s, "")
	}
	for _, s := range h.placeholderFields() {
		resolve(s)
	}
	if h.Redis != nil {
		return h.resolveRedis(resolve)
	}
	return nil
}

// placeholderFields are the string values of the config that may hold
// placeholders, but for the Redis block's (see resolveRedis).
func (h *Handler) placeholderFields() []*string {
	fields := []*string{&h.Issuer, &h.JWKSURL, &h.Audience, &h.DPoP, &h.DPoPNonce, &h.PublicOrigin, &h.TokenKind, &h.OnStoreError, &h.Attest, &h.Environment}
	if h.ResourceMetadata != nil {
		fields = append(fields, &h.ResourceMetadata.Resource)
	}
	for _, list := range [][]string{h.Scopes, h.TokenTypes, h.Algorithms, h.DPoPAlgorithms, h.Purposes} {
		for i := range list {
			fields = append(fields, &list[i])
		}
	}
	if m := h.Membership; m != nil {
		fields = append(fields, &m.Service, &m.Registry, &m.File, &m.RegistryToken, &m.Org)
	}
	return fields
}

// resolveRedis resolves the Redis block's placeholders.
//
// "redis {env.REDIS_URL}" keeps the URL, and any password in it, out of the
// JSON config. A URL of none means the in-process store, as "redis none"
// does. A placeholder that resolves to nothing is an error: a replica
// missing its variable must not quietly lose the replay protection it
// shares with the others.
func (h *Handler) resolveRedis(resolve func(*string)) error {
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
	if len(h.Redis.Addrs) > 0 {
		return nil
	}
	switch {
	case h.Redis.URL == "none":
		h.Redis = nil
	case urlPlaceholder != "" && h.Redis.URL == "":
		return fmt.Errorf(`helseid: redis %s is empty: set it to a Redis URL, or to "none" for the in-process store (one instance only)`, urlPlaceholder)
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
		Environment:      authz.Environment(h.Environment),
		Attest:           authz.AttestMode(h.Attest),
		AttestMaxAge:     time.Duration(h.AttestMaxAge),
		Purposes:         h.Purposes,
	}
	if err := h.checkAttestOptions(); err != nil {
		return cfg, fmt.Errorf("helseid: %w", err)
	}
	if h.DPoPNonce != "" {
		if err := checkNonceSecret(h.DPoPNonce); err != nil {
			return cfg, fmt.Errorf("helseid: %w", err)
		}
		cfg.NonceSecret = []byte(h.DPoPNonce)
	}
	return cfg, nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	start := time.Now()
	var origCopy http.Request
	orig := originalRequest(r, &origCopy)
	if h.metadata != nil && h.metadata.answers(orig) {
		return h.metadata.serve(w, r)
	}
	// Inbound copies of the identity headers never reach the upstream.
	stripIdentityHeaders(r.Header)

	// The context is the current request's: with Caddy's tracing on it
	// carries the request span (Caddy's original-request copy predates it).
	// The span is put at its front (the same span, or none): every check
	// that starts a span, and the audit entry's trace id, then find it
	// there instead of walking Caddy's whole chain of request values.
	ctx := trace.ContextWithSpan(r.Context(), trace.SpanFromContext(r.Context()))
	p, derr := h.verifier.Verify(ctx, h.authzRequest(r, orig))
	if derr == nil {
		derr = checkFormBody(r, p)
	}
	if derr == nil && h.membership != nil {
		derr = h.membership.Check(ctx, p)
	}
	if derr != nil {
		h.metrics.decided(outcomeOf(derr.Class), derr.Reason, time.Since(start))
		h.auditDenial(ctx, orig, derr)
		return h.deny(w, r, derr)
	}
	h.metrics.decided(outcomeAllow, h.allowReason(), time.Since(start))
	h.auditAllow(ctx, orig, p)
	h.setIdentity(r, p)
	// What the handler set must reach the upstream as set: a Connection
	// header naming identity headers would make reverse_proxy drop them as
	// hop-by-hop, and request trailers would add copies after the body.
	stripIdentityConnection(r.Header)
	guardTrailers(r)
	if p.NonceRefresh != "" {
		w.Header().Set("DPoP-Nonce", p.NonceRefresh)
	}
	if h.StripToken {
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

// tokenInQuery reports whether the query carries access_token (RFC 6750 §2.3)
// in any spelling that decodes to it, which this gateway never accepts.
func tokenInQuery(raw string) bool {
	return raw != "" && authz.HasAccessTokenParam(raw)
}

// checkFormBody refuses a form-encoded body that carries an access_token
// (RFC 6750 §2.2), read once the caller is known, and puts what it read back
// as the body. Other media types are never read.
func checkFormBody(r *http.Request, p *authz.Principal) *authz.Error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	form, derr := authz.FormBody(r.Header.Values("Content-Type"), r.Header.Get("Content-Encoding"))
	if derr != nil {
		derr.Caller = p
		return derr
	}
	if !form {
		return nil
	}
	buf, derr := authz.CheckFormBody(r.Body)
	if derr != nil {
		derr.Caller = p
		return derr
	}
	r.Body = readCloser{bytes.NewReader(buf), r.Body}
	return nil
}

// readCloser reads from r and closes c.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (rc readCloser) Close() error { return rc.c.Close() }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
