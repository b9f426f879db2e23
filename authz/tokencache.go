package authz

import (
	"sync"
	"time"
)

// tokenCache keeps verified access tokens by the SHA-256 of their text until
// they expire, so a client that reuses its token pays for the signature once.
// It is bounded: when full, expired entries are swept (at most once per
// tokenSweepInterval, so that a full cache of live tokens does not make every
// new token scan it), and if that freed nothing an arbitrary entry makes room
// (a dropped entry only costs one re-verification).
type tokenCache struct {
	mu        sync.RWMutex
	m         map[[32]byte]*verifiedToken
	max       int
	nextSweep time.Time
}

// tokenSweepInterval is how often a full cache looks for expired entries.
const tokenSweepInterval = time.Second

func newTokenCache(max int) *tokenCache {
	return &tokenCache{m: make(map[[32]byte]*verifiedToken), max: max}
}

func (c *tokenCache) get(sum [32]byte) (*verifiedToken, bool) {
	c.mu.RLock()
	vt, ok := c.m[sum]
	c.mu.RUnlock()
	return vt, ok
}

func (c *tokenCache) put(sum [32]byte, vt *verifiedToken, now time.Time) {
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
	c.m[sum] = vt
}

func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
