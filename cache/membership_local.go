package cache

import (
	"hash/maphash"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/ttlmap"
)

// tierKey names one cached question. A struct of the two strings, not their
// concatenation: building it allocates nothing.
type tierKey struct{ service, org string }

// localEntry is one answer of the in-process tier. It is never modified
// once stored, so a reader may keep the pointer after the lookup.
type localEntry struct {
	ans        authz.Answer // Source "local"
	freshUntil time.Time    // served without asking until then
}

// localTier is the in-process tier: a bounded map split into shards, each
// behind a read-write lock, so that concurrent hits do not contend. An entry
// is kept until FetchedAt + max(TTL, StaleFor); when a shard is full, the
// entries past that go first, then an arbitrary one.
type localTier struct {
	seed    maphash.Seed
	entries *ttlmap.Map[tierKey, *localEntry]
}

// newLocalTier returns an empty tier of at most maxEntries entries
// (DefaultMembershipLocalEntries when maxEntries <= 0).
func newLocalTier(maxEntries int) *localTier {
	if maxEntries <= 0 {
		maxEntries = DefaultMembershipLocalEntries
	}
	return &localTier{
		seed:    maphash.MakeSeed(),
		entries: ttlmap.New[tierKey, *localEntry](ttlmap.Options{Max: maxEntries, Full: ttlmap.DropAny}),
	}
}

// shard returns the shard of k, picked by its organization.
func (l *localTier) shard(k tierKey) *ttlmap.Shard[tierKey, *localEntry] {
	return l.entries.Shard(maphash.String(l.seed, k.org))
}

// get returns the entry of k, or nil.
func (l *localTier) get(k tierKey) *localEntry {
	e, _ := l.shard(k).Get(k)
	return e
}

// put stores e under k until keepUntil if keep, asked under the shard's
// lock, says so.
func (l *localTier) put(k tierKey, e *localEntry, keepUntil, now time.Time, keep func() bool) {
	l.shard(k).PutIf(k, e, keepUntil, now, keep)
}

// evict deletes the entries that match service and org, where "" matches
// any value.
func (l *localTier) evict(service, org string) {
	switch {
	case service != "" && org != "":
		k := tierKey{service: service, org: org}
		l.shard(k).Delete(k)
	case service == "" && org == "":
		l.entries.Clear()
	default:
		l.entries.DeleteFunc(func(k tierKey, _ *localEntry) bool {
			return (service == "" || k.service == service) && (org == "" || k.org == org)
		})
	}
}

// len returns the number of entries held.
func (l *localTier) len() int { return l.entries.Len() }
