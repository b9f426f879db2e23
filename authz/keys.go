package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// KeySource finds the issuer's public key for a kid.
type KeySource interface {
	// Key returns the key with this kid. It returns ErrUnknownKey when the
	// issuer has no such key, and another error when the keys could not be had
	// at all (the issuer is down and nothing is cached).
	Key(ctx context.Context, kid string) (jwk.Key, error)
}

// ErrUnknownKey means the issuer's key set has no key with the token's kid.
var ErrUnknownKey = errors.New("no key with that kid in the issuer's key set")

// Rate limits of IssuerKeys.
const (
	// UnknownKidRefreshInterval: an unknown kid refreshes the key set at most
	// once per this interval per issuer, so random kids cannot multiply
	// fetches.
	UnknownKidRefreshInterval = 30 * time.Second
	// retryAfterFailure: after a failed first fetch, requests fail fast for
	// this long instead of each trying the issuer again.
	retryAfterFailure = 5 * time.Second
	// discoveryTTL: how long discovered metadata is used (HelseID FK2: ~24 h).
	discoveryTTL = 24 * time.Hour
	// minBackgroundRefresh: the key set is refreshed in the background no more
	// often than this, whatever Cache-Control says.
	minBackgroundRefresh = 5 * time.Minute
)

// IssuerKeys is the KeySource for one issuer: OpenID discovery for jwks_uri
// (unless a JWKS URL is given), then jwx's jwk.Cache, which refreshes the set
// in the background and keeps serving the last good set while the issuer is
// unreachable. The cache's goroutine lives until ctx is done.
type IssuerKeys struct {
	issuer   string
	override string
	client   *http.Client
	clock    Clock
	cache    *jwk.Cache
	ctx      context.Context

	onRefresh func(ok bool)

	// current is the last good key set of jwksURL, stored by postFetch after
	// every successful fetch (foreground or the cache's background refresh).
	// Requests read it and nothing else: jwx's cache holds its entry's lock
	// for the whole of a fetch, so reading through the cache would make every
	// request wait on a slow issuer during a refresh.
	current atomic.Pointer[jwk.Set]

	fetchMu sync.Mutex // one discovery or JWKS fetch at a time; held across I/O

	mu          sync.Mutex // guards the fields below; never held across I/O
	jwksURL     string
	discovered  time.Time
	lastRefresh time.Time // the last refresh for an unknown kid
	lastFailure time.Time

	// For Status: clock time (UnixNano) of the last fetch of the key set
	// that succeeded and of the last that failed, in the foreground or in
	// the background; the number of keys of the last good set.
	okAt   atomic.Int64
	failAt atomic.Int64
	nKeys  atomic.Int64
}

// NewIssuerKeys returns the key source for issuer. jwksURL, when not empty,
// replaces discovery. No network I/O happens before the first Key call.
// onRefresh, if not nil, is told about every fetch of the key set, once per
// fetch: those made for a request (the first, an unknown kid), including a
// failed discovery, and the background refreshes of the cache. It must be
// cheap and must not call the IssuerKeys.
func NewIssuerKeys(ctx context.Context, issuer, jwksURL string, client *http.Client, clock Clock, onRefresh func(ok bool)) *IssuerKeys {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	if clock == nil {
		clock = SystemClock
	}
	if onRefresh == nil {
		onRefresh = func(bool) {}
	}
	k := &IssuerKeys{
		issuer:    issuer,
		override:  jwksURL,
		client:    client,
		clock:     clock,
		ctx:       ctx,
		onRefresh: onRefresh,
	}
	// Background refreshes report through the error sink (failures) and the
	// post-fetch hook (every success, foreground ones included).
	k.cache = jwk.NewCache(ctx, jwk.WithErrSink(errSink(func(error) { k.refreshed(false) })))
	return k
}

// KeyStatus is what IssuerKeys knows of the health of its key set.
type KeyStatus struct {
	Issuer      string
	LastSuccess time.Time // the last good fetch of the key set; zero: none yet
	LastFailure time.Time // the last failed fetch (or discovery); zero: none
	Keys        int       // keys in the set last fetched
}

// Status reports when the key set was last fetched, well or not. It does no
// I/O. Keys are fetched on the first request, so a fresh process has neither
// time set.
func (k *IssuerKeys) Status() KeyStatus {
	st := KeyStatus{Issuer: k.issuer, Keys: int(k.nKeys.Load())}
	if t := k.okAt.Load(); t != 0 {
		st.LastSuccess = time.Unix(0, t)
	}
	if t := k.failAt.Load(); t != 0 {
		st.LastFailure = time.Unix(0, t)
	}
	return st
}

// errSink adapts a function to jwk.ErrSink.
type errSink func(error)

func (f errSink) Error(err error) { f(err) }

// refreshed records the outcome of one fetch and tells onRefresh.
func (k *IssuerKeys) refreshed(ok bool) {
	now := k.clock.Now().UnixNano()
	if ok {
		k.okAt.Store(now)
	} else {
		k.failAt.Store(now)
	}
	k.onRefresh(ok)
}

// postFetch is the cache's hook after every successful fetch of a set: the
// set of the current JWKS URL becomes the one requests use.
func (k *IssuerKeys) postFetch(u string, set jwk.Set) (jwk.Set, error) {
	k.mu.Lock()
	// Under k.mu: a fetch of an old URL must not store after the switch.
	if u == k.jwksURL {
		k.current.Store(&set)
		k.nKeys.Store(int64(set.Len()))
	}
	k.mu.Unlock()
	k.refreshed(true)
	return set, nil
}

// Key implements KeySource.
func (k *IssuerKeys) Key(ctx context.Context, kid string) (jwk.Key, error) {
	set, err := k.set(ctx)
	if err != nil {
		return nil, err
	}
	if key, ok := set.LookupKeyID(kid); ok {
		return key, nil
	}
	set, err = k.refreshForUnknown(ctx)
	if err != nil {
		return nil, err
	}
	if key, ok := set.LookupKeyID(kid); ok {
		return key, nil
	}
	return nil, ErrUnknownKey
}

// set returns the last good key set, fetching it the first time. Once there
// is one it takes no lock: a fetch in progress never holds requests up.
func (k *IssuerKeys) set(ctx context.Context) (jwk.Set, error) {
	if p := k.current.Load(); p != nil {
		return *p, nil
	}
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	if p := k.current.Load(); p != nil { // fetched while we waited
		return *p, nil
	}
	now := k.clock.Now()
	k.mu.Lock()
	lastFailure := k.lastFailure
	k.mu.Unlock()
	if !lastFailure.IsZero() && now.Sub(lastFailure) < retryAfterFailure {
		return nil, errors.New("issuer keys unavailable (recent failure)")
	}
	set, err := k.fetch(ctx)
	k.mu.Lock()
	if err != nil {
		k.lastFailure = now
	} else {
		k.lastFailure = time.Time{}
	}
	k.mu.Unlock()
	return set, err
}

// fetch discovers the JWKS URL when needed, registers it with the cache and
// fetches it. k.fetchMu is held. A success is reported by postFetch, a
// failure here.
func (k *IssuerKeys) fetch(ctx context.Context) (jwk.Set, error) {
	set, err := k.fetchSet(ctx)
	if err != nil {
		k.refreshed(false)
	}
	return set, err
}

func (k *IssuerKeys) fetchSet(ctx context.Context) (jwk.Set, error) {
	k.mu.Lock()
	u, discovered := k.jwksURL, k.discovered
	k.mu.Unlock()
	rediscovered := false
	if k.override != "" {
		u = k.override
	} else if u == "" || k.clock.Now().Sub(discovered) >= discoveryTTL {
		var err error
		if u, err = k.discover(ctx); err != nil {
			return nil, err
		}
		rediscovered = true
	}
	if !k.cache.IsRegistered(u) {
		err := k.cache.Register(u, jwk.WithHTTPClient(k.client), jwk.WithMinRefreshInterval(minBackgroundRefresh),
			jwk.WithPostFetcher(jwk.PostFetchFunc(k.postFetch)))
		if err != nil {
			return nil, fmt.Errorf("register JWKS: %w", err)
		}
	}
	k.mu.Lock()
	old := k.jwksURL
	k.jwksURL = u
	if rediscovered || old != u {
		k.discovered = k.clock.Now()
	}
	k.mu.Unlock()
	if old != "" && old != u {
		// The issuer moved its keys: the old URL's background refresh stops.
		_ = k.cache.Unregister(old)
	}
	set, err := k.cache.Refresh(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	return set, nil
}

// refreshForUnknown refetches the key set for an unknown kid: at most one
// refresh at a time (callers with an unknown kid queue for it and then find
// it fresh; callers with a known kid never wait) and at most one per
// UnknownKidRefreshInterval. Outside that, or when the refresh fails, the
// last good set answers.
func (k *IssuerKeys) refreshForUnknown(ctx context.Context) (jwk.Set, error) {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	now := k.clock.Now()
	k.mu.Lock()
	recent := !k.lastRefresh.IsZero() && now.Sub(k.lastRefresh) < UnknownKidRefreshInterval
	if !recent {
		k.lastRefresh = now
	}
	k.mu.Unlock()
	if !recent {
		if set, err := k.fetch(ctx); err == nil {
			return set, nil
		}
		// The issuer is down: the last good set still answers.
	}
	if p := k.current.Load(); p != nil {
		return *p, nil
	}
	return nil, errors.New("issuer keys unavailable")
}

// discover reads jwks_uri from the issuer's OpenID configuration, whose
// issuer must equal the configured one exactly.
func (k *IssuerKeys) discover(ctx context.Context) (string, error) {
	u := strings.TrimSuffix(k.issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("discovery: status %d", resp.StatusCode)
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&meta); err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	if meta.Issuer != k.issuer {
		return "", errors.New("discovery: issuer in the metadata differs from the configured issuer")
	}
	if err := CheckURL("jwks_uri", meta.JWKSURI); err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	return meta.JWKSURI, nil
}
