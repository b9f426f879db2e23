package authz

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Request is what the verifier reads of an HTTP request. The caller fills it
// from the ORIGINAL request (before any rewrite), so htu is judged against
// the URI the client signed.
type Request struct {
	Method        string
	Scheme        string   // "https" or "http"; ignored when Config.PublicOrigin is set
	Host          string   // the Host header; ignored when Config.PublicOrigin is set
	EscapedPath   string   // the request path as sent, percent-encoded
	Authorization []string // every Authorization header value
	DPoP          []string // every DPoP header value
	TokenInQuery  bool     // the query string carries access_token (HasAccessTokenParam)
}

// Principal is who a verified request comes from. It never holds the pid:
// only whether the token is a user token.
type Principal struct {
	Scheme         string // "DPoP" or "Bearer"
	ClientID       string
	Subject        string
	TokenID        string // the access token's jti
	Kind           TokenKind
	SecurityLevel  string
	AssuranceLevel string
	HPRNumber      string
	OrgParent      string
	OrgChild       string
	OrgSupplier    string
	ClientTenancy  string
	JKT            string // thumbprint of the proof key; empty for Bearer
	// Attest is what a validated trust-framework attest says (codes and
	// ids); zero when the route does not read it or the token has none.
	Attest  Attest
	Expires time.Time
	// NonceRefresh is set when server nonces are on and the proof's nonce is
	// past half its life: the caller sends this new one in DPoP-Nonce.
	NonceRefresh string
	// The membership answer the decision rests on, set by
	// MembershipCheck.Check once a lookup answered (MembershipAnswered; with
	// org both, the older answer, stale when either was): how old it was at
	// the decision, and whether it was a last-known answer served past its
	// TTL because the registry was failing (within stale_for).
	MembershipAnswered bool
	MembershipStale    bool
	MembershipAge      time.Duration
	// Memo is the verified token's slot for what the caller derives from
	// the token alone (TokenMemo); nil in a Principal not made by Verify.
	Memo *TokenMemo
}

// Verifier checks requests against one route's Config. It is safe for
// concurrent use.
type Verifier struct {
	cfg          Config
	keys         KeySource
	replay       ReplayStore
	clock        Clock
	nonces       *Nonces
	tokens       *tokenCache
	proofHeaders *proofHeaderCache
	replayTTL    time.Duration // how long a jti is remembered: the whole acceptance window
	// The normalized PublicOrigin, as its scheme and host ("" when unset).
	originScheme, originHost string
}

// DefaultTokenCacheSize bounds the verified-token cache.
const DefaultTokenCacheSize = 10000

// NewVerifier returns a Verifier for cfg, which must be valid. replay may be
// nil only when cfg.DPoP is optional and no DPoP proof will ever be accepted;
// in practice the caller always passes one.
func NewVerifier(cfg Config, keys KeySource, replay ReplayStore, clock Clock) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if keys == nil || replay == nil {
		return nil, errors.New("a key source and a replay store are required")
	}
	if clock == nil {
		clock = SystemClock
	}
	cfg = cfg.withDefaults()
	v := &Verifier{
		cfg: cfg, keys: keys, replay: replay, clock: clock,
		tokens:       newTokenCache(DefaultTokenCacheSize),
		proofHeaders: newProofHeaderCache(DefaultProofKeyCacheSize),
		replayTTL:    cfg.DPoPMaxAge + cfg.DPoPFutureSkew + time.Second,
	}
	if len(cfg.NonceSecret) > 0 {
		v.nonces = NewNonces(cfg.NonceSecret)
	}
	if cfg.PublicOrigin != "" {
		o, err := NormalizeHTU(cfg.PublicOrigin)
		if err != nil {
			return nil, err
		}
		v.originScheme, v.originHost, _ = strings.Cut(strings.TrimSuffix(o, "/"), "://")
	}
	return v, nil
}

// Config returns the verifier's configuration with defaults filled in.
func (v *Verifier) Config() Config { return v.cfg }

// NewNonce returns a fresh server nonce, or "" when nonces are off. The caller
// sends it in DPoP-Nonce with a use_dpop_nonce challenge.
func (v *Verifier) NewNonce() string {
	if v.nonces == nil {
		return ""
	}
	return v.nonces.Issue(v.clock.Now())
}

// Verify runs the checks on a request (framing, the access token, the DPoP
// proof, the token policy and, on routes that read it, the trust-framework
// attest) and returns the principal, or the first failure.
func (v *Verifier) Verify(ctx context.Context, r Request) (*Principal, *Error) {
	now := v.clock.Now()
	// 1. Framing.
	var cred credentials
	if derr := v.readCredentials(&r, &cred); derr != nil {
		return nil, derr
	}
	// 2. The access token.
	vt, derr := v.verifyTokenSpan(ctx, cred.token, cred.hit, now)
	if derr != nil {
		return nil, derr
	}
	p := newPrincipal(cred.scheme, vt)
	if derr := v.checkScopes(vt.claims.Scope); derr != nil {
		return nil, withCaller(derr, p)
	}
	// 3. The proof and the binding.
	if derr := v.checkBinding(ctx, &r, &cred, vt, p, now); derr != nil {
		return nil, withCaller(derr, p)
	}
	// 4. Token kind and user policy.
	if derr := v.checkPolicy(p); derr != nil {
		return nil, withCaller(derr, p)
	}
	// 4a. The trust-framework attest.
	if v.cfg.Attest != AttestOff {
		if derr := v.checkAttest(p, vt, now); derr != nil {
			return nil, withCaller(derr, p)
		}
	}
	return p, nil
}

// credentials is what the framing step reads of a request: the scheme
// ("DPoP" or "Bearer"), the access token and the DPoP proof as sent (""
// under Bearer), and the verified-token cache's entry for the token (nil
// when it has none).
type credentials struct {
	scheme, token, proof string
	hit                  *verifiedToken
}

// readCredentials is the framing step: where the token travels, the path,
// the Authorization header and, under DPoP, the DPoP header. It fills c.
func (v *Verifier) readCredentials(r *Request, c *credentials) *Error {
	// The token travels only in one Authorization header (RFC 6750 §2).
	if r.TokenInQuery {
		return deny(InvalidRequest, "token_in_query", "access tokens are accepted only in the Authorization header")
	}
	// The path must name one resource however a rewrite reads it (checkPath).
	if derr := checkPath(r.EscapedPath); derr != nil {
		return derr
	}
	var derr *Error
	if c.scheme, c.token, derr = v.authorization(r.Authorization); derr != nil {
		return derr
	}
	// The token's syntax (RFC 9110 §11.2 token68). A token found in the
	// verified-token cache has the very text of one that passed this check
	// before it was cached, so only a token not found there is scanned (a
	// scan of its kilobyte on every request cost more than the lookup).
	hit, found := v.tokens.get(c.token)
	if !found && !isToken68(c.token) {
		return deny(InvalidRequest, "malformed_authorization", "the Authorization header is malformed")
	}
	c.hit = hit
	if c.scheme == "DPoP" {
		c.proof, derr = dpopHeader(r.DPoP)
	}
	return derr
}

// authorization reads the one Authorization header: a scheme the route
// accepts, a space and a token.
func (v *Verifier) authorization(values []string) (scheme, token string, derr *Error) {
	switch len(values) {
	case 0:
		return "", "", deny(NoCredentials, "no_credentials", "authentication is required")
	case 1:
	default:
		return "", "", deny(InvalidRequest, "multiple_authorization", "exactly one Authorization header is allowed")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	token = strings.TrimLeft(token, " ")
	switch {
	case !ok || token == "":
		return "", "", deny(InvalidRequest, "malformed_authorization", "the Authorization header is malformed")
	case strings.EqualFold(scheme, "DPoP"):
		return "DPoP", token, nil
	case !strings.EqualFold(scheme, "Bearer"):
		return "", "", deny(NoCredentials, "unsupported_scheme", "authentication is required")
	case v.cfg.DPoP == DPoPRequired:
		return "", "", deny(InvalidToken, "bearer_not_allowed", "this API requires DPoP-bound tokens")
	}
	return "Bearer", token, nil
}

// dpopHeader returns the proof of the DPoP header, RFC 9449 §4.3 step 1:
// exactly one DPoP header holding one value.
func dpopHeader(values []string) (string, *Error) {
	switch {
	case len(values) == 0:
		return "", deny(InvalidProof, "proof_missing", "a DPoP proof is required")
	case len(values) > 1 || strings.Contains(values[0], ","):
		return "", deny(InvalidRequest, "multiple_dpop", "exactly one DPoP header with one proof is allowed")
	}
	return strings.TrimSpace(values[0]), nil
}

// newPrincipal is who a verified access token says the caller is: a user
// when the token carries a pid, else a machine.
func newPrincipal(scheme string, vt *verifiedToken) *Principal {
	c := &vt.claims
	p := &Principal{
		Scheme:         scheme,
		ClientID:       c.ClientID,
		Subject:        c.Sub,
		TokenID:        c.JTI,
		Kind:           KindMachine,
		SecurityLevel:  c.SecurityLevel,
		AssuranceLevel: c.AssuranceLevel,
		HPRNumber:      c.HPRNumber,
		OrgParent:      c.OrgParent,
		OrgChild:       c.OrgChild,
		OrgSupplier:    c.OrgSupplier,
		ClientTenancy:  c.ClientTenancy,
		Expires:        vt.exp,
		Memo:           &vt.memo,
	}
	if c.PID != "" {
		p.Kind = KindUser
	}
	if c.Cnf != nil {
		// The thumbprint the token is bound to; a proof that verifies has
		// exactly this one. Set before the proof is checked so that the
		// audit entry of a proof failure names it.
		p.JKT = *c.Cnf.JKT
	}
	return p
}

// checkScopes demands every configured scope of the token.
func (v *Verifier) checkScopes(scope scopeList) *Error {
	for _, s := range v.cfg.Scopes {
		if !scope.has(s) {
			return deny(InsufficientScope, "scope_missing", "the access token lacks a required scope")
		}
	}
	return nil
}

// checkBinding is step 3: a bound token comes only with the DPoP scheme, and
// then with a valid proof of its key for this request. A proof that
// verifies sets the principal's JKT, and a new nonce when its own is past
// half its life.
func (v *Verifier) checkBinding(ctx context.Context, r *Request, cred *credentials, vt *verifiedToken, p *Principal, now time.Time) *Error {
	cnf := vt.claims.Cnf
	if cred.scheme == "Bearer" {
		// A DPoP-bound token must never be accepted as a bearer token (RFC 9449 §7.2).
		if cnf != nil {
			return deny(InvalidToken, "bound_token_as_bearer", "a DPoP-bound token must be sent with the DPoP scheme")
		}
		return nil
	}
	// The DPoP scheme needs a DPoP-bound token (RFC 9449 §7.1).
	if cnf == nil {
		return deny(InvalidToken, "token_not_bound", "the access token is not DPoP-bound")
	}
	htu, err := v.expectedHTU(r)
	if err != nil {
		return denyErr(InvalidRequest, "malformed_request", "the request URI is malformed", err)
	}
	pctx, span := startSpan(ctx, SpanVerifyProof)
	cp, derr := v.verifyProof(pctx, cred.proof, proofTarget{method: r.Method, htu: htu, ath: vt.ath, jkt: *cnf.JKT}, now)
	endSpan(span, derr)
	if derr != nil {
		return derr
	}
	p.JKT = cp.jkt
	if v.nonces != nil && cp.nonceAge > NonceLifetime/2 {
		p.NonceRefresh = v.nonces.Issue(now)
	}
	return nil
}

// verifyTokenSpan is verifyToken in a helseid.verify_token span.
func (v *Verifier) verifyTokenSpan(ctx context.Context, token string, hit *verifiedToken, now time.Time) (*verifiedToken, *Error) {
	tctx, span := startSpan(ctx, SpanVerifyToken)
	vt, cached, derr := v.verifyToken(tctx, token, hit, now)
	if span != nil {
		span.SetAttributes(AttrTokenCached.Bool(cached))
		endSpan(span, derr)
	}
	return vt, derr
}

// withCaller attaches the verified token's principal to a denial, for the
// audit log.
func withCaller(derr *Error, p *Principal) *Error {
	derr.Caller = p
	return derr
}

// expectedHTU is the normalized URI the proof must name: the public origin
// (or the request's own scheme and host) and the original path.
func (v *Verifier) expectedHTU(r *Request) (expectedHTU, error) {
	scheme, host := v.originScheme, v.originHost
	if scheme == "" {
		scheme, host = r.Scheme, r.Host
		if scheme == "" {
			scheme = "https"
		}
	}
	path := r.EscapedPath
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return newExpectedHTU(scheme, host, path)
}

// checkPolicy applies token_kind, min_security_level and require_hpr, after
// the proof and before the attest and the membership.
func (v *Verifier) checkPolicy(p *Principal) *Error {
	switch v.cfg.TokenKind {
	case KindUser:
		if p.Kind != KindUser {
			return deny(InsufficientScope, "token_kind", "this API requires a user token")
		}
	case KindMachine:
		if p.Kind != KindMachine {
			return deny(InsufficientScope, "token_kind", "this API requires a machine token")
		}
	}
	if p.Kind != KindUser {
		return nil
	}
	if v.cfg.MinSecurityLevel > 0 {
		// security_level is a string ("4") in HelseID tokens.
		level, err := strconv.Atoi(p.SecurityLevel)
		if err != nil || level < v.cfg.MinSecurityLevel {
			return deny(InsufficientScope, "security_level", "the user's security level is too low")
		}
	}
	if v.cfg.RequireHPR && p.HPRNumber == "" {
		return deny(InsufficientScope, "hpr_missing", "this API requires a health-personnel number")
	}
	return nil
}

// isToken68 reports whether s has the token68 syntax of RFC 9110 §11.2.
func isToken68(s string) bool {
	i := 0
	for ; i < len(s) && token68Chars[s[i]]; i++ {
	}
	for ; i < len(s) && s[i] == '='; i++ {
	}
	return i == len(s) && len(s) > 0
}

// token68Chars are the characters of token68 before its '=' padding.
var token68Chars = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'
	}
	return t
}()
