package cache

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/helsegate/helsegate/authz"
)

// memKey names one cached question. A struct of the two strings, not their
// concatenation: building it allocates nothing.
type memKey struct{ service, org string }

// memEntry is one cached answer. It is never modified once stored, so a
// reader may keep the pointer after the shard's lock is released.
type memEntry struct {
	ans        authz.Answer // Source "local"
	freshUntil time.Time    // served without asking until then
	keepUntil  time.Time    // dropped from then on (FetchedAt + max(TTL, StaleFor))
}

// memLocal is the in-process tier: a bounded map split into shards, each
// behind a read-write lock, so that concurrent hits do not contend.
type memLocal struct {
	seed   maphash.Seed
	mask   uint64
	shards []memShard
}

// memShard is one lock's worth of entries.
type memShard struct {
	mu   sync.RWMutex
	max  int
	m    map[memKey]*memEntry
	next time.Time // no entry's keepUntil is before next; zero when empty
	_    [64]byte  // pad to 128 bytes: shards do not share cache lines
}

// newMemLocal returns an empty tier of at most maxEntries entries
// (DefaultMembershipLocalEntries when maxEntries <= 0).
func newMemLocal(maxEntries int) *memLocal {
	if maxEntries <= 0 {
		maxEntries = DefaultMembershipLocalEntries
	}
	// One shard per 1024..2047 entries, at most 64: a small tier is exact.
	n := 1
	for n < 64 && maxEntries/(2*n) >= 1024 {
		n *= 2
	}
	l := &memLocal{seed: maphash.MakeSeed(), mask: uint64(n - 1), shards: make([]memShard, n)}
	for i := range l.shards {
		sh := &l.shards[i]
		sh.max = maxEntries / n
		if i < maxEntries%n {
			sh.max++
		}
		sh.m = make(map[memKey]*memEntry)
	}
	return l
}

// shard returns the shard of k.
func (l *memLocal) shard(k memKey) *memShard {
	if l.mask == 0 {
		return &l.shards[0]
	}
	return &l.shards[maphash.String(l.seed, k.org)&l.mask]
}

// get returns the entry of k, or nil.
func (l *memLocal) get(k memKey) *memEntry {
	sh := l.shard(k)
	sh.mu.RLock()
	e := sh.m[k]
	sh.mu.RUnlock()
	return e
}

// put stores e under k if keep, asked under the shard's lock, says so. When
// the shard is full it first drops the entries past their keepUntil at now,
// then, if none was, an arbitrary one.
func (l *memLocal) put(k memKey, e *memEntry, now time.Time, keep func() bool) {
	sh := l.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !keep() {
		return
	}
	if _, ok := sh.m[k]; !ok && len(sh.m) >= sh.max && !sh.sweep(now) {
		for victim := range sh.m {
			delete(sh.m, victim)
			break
		}
	}
	sh.m[k] = e
	if sh.next.IsZero() || e.keepUntil.Before(sh.next) {
		sh.next = e.keepUntil
	}
}

// sweep deletes the entries past their keepUntil at now and reports whether
// any was. It costs nothing while no entry can be (now before next).
func (sh *memShard) sweep(now time.Time) bool {
	if now.Before(sh.next) {
		return false
	}
	before := len(sh.m)
	var next time.Time
	for k, e := range sh.m {
		switch {
		case !now.Before(e.keepUntil):
			delete(sh.m, k)
		case next.IsZero() || e.keepUntil.Before(next):
			next = e.keepUntil
		}
	}
	sh.next = next
	return len(sh.m) < before
}

// evict deletes the entries that match service and org, where "" matches
// any value.
func (l *memLocal) evict(service, org string) {
	if service != "" && org != "" {
		k := memKey{service: service, org: org}
		sh := l.shard(k)
		sh.mu.Lock()
		delete(sh.m, k)
		sh.mu.Unlock()
		return
	}
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		if service == "" && org == "" {
			sh.m = make(map[memKey]*memEntry) // clear would keep the memory
			sh.next = time.Time{}
		} else {
			for k := range sh.m {
				if (service == "" || k.service == service) && (org == "" || k.org == org) {
					delete(sh.m, k)
				}
			}
		}
		sh.mu.Unlock()
	}
}

// len returns the number of entries held.
func (l *memLocal) len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}
