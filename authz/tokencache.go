package authz

import (
	"strings"
	"sync"
	"time"
)

// tokenCache keeps verified access tokens by their text until they expire, so
// a client that reuses its token pays for the signature once.
//
// The key is the token itself, not a digest of it: a lookup is then the
// map's own seeded hash and one comparison of the text, where a SHA-256 key
// cost a SHA-256 of the whole token (about 1 KB) on every request, the
// largest cost of a request with a cached Bearer token. The price is memory:
// the cache holds each token's text (about 1 KB; 10 MB at
// DefaultTokenCacheSize). The comparison is not constant-time, and need not
// be: it only runs for a token whose hash, under the map's random seed,
// already matches, and it compares whole words, so its timing cannot be
// walked byte by byte towards a cached token.
// It is bounded: when full, expired entries are swept (at most once per
// tokenSweepInterval, so that a full cache of live tokens does not make every
// new token scan it), and if that freed nothing an arbitrary entry makes room
// (a dropped entry only costs one re-verification).
type tokenCache struct {
	mu        sync.RWMutex
	m         map[string]*verifiedToken
	max       int
	nextSweep time.Time
}

// tokenSweepInterval is how often a full cache looks for expired entries.
const tokenSweepInterval = time.Second

func newTokenCache(max int) *tokenCache {
	return &tokenCache{m: make(map[string]*verifiedToken), max: max}
}

// get returns the verified token of this text, without allocating.
func (c *tokenCache) get(token string) (*verifiedToken, bool) {
	c.mu.RLock()
	vt, ok := c.m[token]
	c.mu.RUnlock()
	return vt, ok
}

// put keeps vt under a copy of token (the caller's string may share memory
// with the whole request).
func (c *tokenCache) put(token string, vt *verifiedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max && !now.Before(c.nextSweep) {
		c.nextSweep = now.Add(tokenSweepInterval)
		for k, e := range c.m {
			if !now.Before(e.exp) {
				delete(c.m, k)
			}
		}
	}
	for k := range c.m {
		if len(c.m) < c.max {
			break
		}
		delete(c.m, k)
	}
	c.m[strings.Clone(token)] = vt
}

func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
