package authz

import (
	"strings"
	"time"

	"github.com/helsegate/helsegate/internal/ttlmap"
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
// tokenSweepInterval, so that a full cache does not scan its entries for
// every new token), and if that freed nothing an arbitrary entry makes room
// (a dropped entry only costs one re-verification). It is one shard: more
// would hash each token once more to pick one, a second pass over its
// kilobyte.
type tokenCache struct {
	entries *ttlmap.Map[string, *verifiedToken]
	shard   *ttlmap.Shard[string, *verifiedToken] // the one shard
}

// tokenSweepInterval is how often a full cache looks for expired entries.
const tokenSweepInterval = time.Second

func newTokenCache(max int) *tokenCache {
	entries := ttlmap.New[string, *verifiedToken](
		ttlmap.Options{Max: max, Shards: 1, Full: ttlmap.DropAny, SweepEvery: tokenSweepInterval})
	return &tokenCache{entries: entries, shard: entries.Shard(0)}
}

// get returns the verified token of this text, without allocating.
func (c *tokenCache) get(token string) (*verifiedToken, bool) {
	return c.shard.Get(token)
}

// put keeps vt until it expires under a copy of token (the caller's string
// may share memory with the whole request).
func (c *tokenCache) put(token string, vt *verifiedToken, now time.Time) {
	c.shard.Put(strings.Clone(token), vt, vt.exp, now)
}

func (c *tokenCache) len() int { return c.entries.Len() }
