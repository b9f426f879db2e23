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
	// once per this interval per issuer (SPEC §3).
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

	mu          sync.Mutex // serializes discovery and refreshes: one at a time
	jwksURL     string
	discovered  time.Time
	lastRefresh time.Time // the last refresh for an unknown kid
	lastFailure time.Time
	onRefresh   func(ok bool)

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

// postFetch is the cache's hook after every successful fetch of the set.
func (k *IssuerKeys) postFetch(_ string, set jwk.Set) (jwk.Set, error) {
	k.nKeys.Store(int64(set.Len()))
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

// set returns the cached key set, fetching it the first time.
func (k *IssuerKeys) set(ctx context.Context) (jwk.Set, error) {
	k.mu.Lock()
	u := k.jwksURL
	k.mu.Unlock()
	if u != "" {
		if set, err := k.cache.Get(ctx, u); err == nil {
			return set, nil
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.jwksURL != "" && k.clock.Now().Sub(k.discovered) < discoveryTTL {
		if set, err := k.cache.Get(ctx, k.jwksURL); err == nil {
			return set, nil
		}
	}
	now := k.clock.Now()
	if !k.lastFailure.IsZero() && now.Sub(k.lastFailure) < retryAfterFailure {
		return nil, errors.New("issuer keys unavailable (recent failure)")
	}
	set, err := k.fetchLocked(ctx)
	if err != nil {
		k.lastFailure = now
		return nil, err
	}
	k.lastFailure = time.Time{}
	return set, nil
}

// fetchLocked discovers the JWKS URL when needed, registers it with the cache
// and fetches it. k.mu is held. A success is reported by postFetch, a
// failure here.
func (k *IssuerKeys) fetchLocked(ctx context.Context) (jwk.Set, error) {
	set, err := k.fetchSetLocked(ctx)
	if err != nil {
		k.refreshed(false)
	}
	return set, err
}

func (k *IssuerKeys) fetchSetLocked(ctx context.Context) (jwk.Set, error) {
	u := k.override
	if u == "" {
		if k.jwksURL != "" && k.clock.Now().Sub(k.discovered) < discoveryTTL {
			u = k.jwksURL
		} else {
			var err error
			if u, err = k.discover(ctx); err != nil {
				return nil, err
			}
		}
	}
	if !k.cache.IsRegistered(u) {
		err := k.cache.Register(u, jwk.WithHTTPClient(k.client), jwk.WithMinRefreshInterval(minBackgroundRefresh),
			jwk.WithPostFetcher(jwk.PostFetchFunc(k.postFetch)))
		if err != nil {
			return nil, fmt.Errorf("register JWKS: %w", err)
		}
	}
	if k.jwksURL != u {
		k.jwksURL = u
		k.discovered = k.clock.Now()
	}
	set, err := k.cache.Refresh(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	return set, nil
}

// refreshForUnknown refetches the key set for an unknown kid: at most one
// refresh at a time (callers queue on the mutex and then find it fresh) and at
// most one per UnknownKidRefreshInterval. Outside that, or when the refresh
// fails, the current set answers.
func (k *IssuerKeys) refreshForUnknown(ctx context.Context) (jwk.Set, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.lastRefresh.IsZero() && k.clock.Now().Sub(k.lastRefresh) < UnknownKidRefreshInterval {
		return k.cache.Get(ctx, k.jwksURL)
	}
	k.lastRefresh = k.clock.Now()
	set, err := k.fetchLocked(ctx)
	if err != nil {
		// The issuer is down: the last good set still answers.
		return k.cache.Get(ctx, k.jwksURL)
	}
	return set, nil
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
