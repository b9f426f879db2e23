// Package ttlmap is a bounded map whose entries expire, split into shards
// behind their own locks: the one mechanism under the gateway's in-process
// replay store and its in-process caches (verified tokens, proof headers,
// membership answers).
//
// What a full map does is the caller's choice (Full). A cache drops any
// entry, since a dropped entry costs one recomputation. The replay store
// refuses the new key, since a forgotten entry is a proof that could be
// replayed: it must keep every record until it expires.
//
// It is hand-written because no cache in the module graph can refuse: they
// make room by evicting live entries (LRU, or ristretto's admission policy,
// which also drops writes silently and applies them asynchronously), and
// they run a janitor goroutine. This one sweeps expired entries only when a
// shard is full and one of them may have expired, so a hit is a read lock
// and a map lookup, with no allocation.
package ttlmap

import (
	"iter"
	"sync"
	"time"
)

// Full is what a Map does with a new key when the key's shard holds its
// share of Options.Max entries and none of them has expired.
type Full uint8

const (
	// DropAny deletes an arbitrary entry to make room: for a cache.
	DropAny Full = iota
	// Refuse does not store the new key: for a store that must never forget
	// an entry before it expires.
	Refuse
)

// Options configures New.
type Options struct {
	// Max bounds the entries held, expired ones not yet swept included. Each
	// shard holds its share, so a shard may be full slightly before the
	// whole map is. Values below 1 are 1.
	Max int
	// Shards is the number of shards, rounded down to a power of two and
	// bounded by 64 and by Max. 0: one per 1024 to 2047 entries of Max, so a
	// small map is exact (one shard) and a large one does not contend.
	Shards int
	// Full is what a full shard does with a new key.
	Full Full
	// SweepEvery, when positive, is the least time between two sweeps of a
	// full shard for expired entries. 0: a full shard sweeps whenever one of
	// its entries may have expired.
	SweepEvery time.Duration
	// WriteMostly gives each shard a mutex instead of a read-write lock:
	// Gets then wait for each other, and a write costs two atomic operations
	// less. For a map that nearly every call writes (the replay store).
	WriteMostly bool
}

// Map is a bounded map from K to V whose entries expire at a time given
// with each (Never: never). Time is always the caller's argument: the map
// reads no clock. It is safe for concurrent use.
//
// The caller spreads the keys over the shards: it hashes a key once, with
// its own seed, over the whole key or a part of it, and passes the hash to
// Shard. The hash is the caller's because it knows what is cheap: the replay
// store's key is a hash already, and a map of one shard is passed 0 rather
// than hash a kilobyte-long token once more than the Go map does.
type Map[K comparable, V any] struct {
	mask   uint64
	shards []Shard[K, V]
}

// Never is the expiry of an entry that does not expire.
var Never = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// entry is one value and the instant it expires.
type entry[V any] struct {
	v   V
	exp time.Time
}

// Shard is one lock's worth of a Map's entries: the shard of the keys whose
// hash selects it. A key must always be used with the same hash.
type Shard[K comparable, V any] struct {
	rw        sync.RWMutex // the lock, unless excl
	mu        sync.Mutex   // the lock when excl (Options.WriteMostly)
	max       int
	m         map[K]entry[V]
	next      time.Time // no entry expires before next; zero when unknown
	sweepFrom time.Time // SweepEvery: no sweep before then
	every     time.Duration
	full      Full
	excl      bool
	_         [22]byte // pad to 128 bytes: shards do not share cache lines
}

// New returns an empty Map.
func New[K comparable, V any](o Options) *Map[K, V] {
	o.Max = max(o.Max, 1)
	n := 1
	switch {
	case o.Shards > 0:
		for n*2 <= min(o.Shards, 64, o.Max) {
			n *= 2
		}
	default:
		for n < 64 && o.Max/(2*n) >= 1024 {
			n *= 2
		}
	}
	m := &Map[K, V]{mask: uint64(n - 1), shards: make([]Shard[K, V], n)}
	for i := range m.shards {
		sh := &m.shards[i]
		sh.max = o.Max / n
		if i < o.Max%n {
			sh.max++
		}
		sh.m = make(map[K]entry[V])
		sh.every, sh.full, sh.excl = o.SweepEvery, o.Full, o.WriteMostly
	}
	return m
}

// Shard returns the shard of the keys whose hash is h.
func (m *Map[K, V]) Shard(h uint64) *Shard[K, V] { return &m.shards[h&m.mask] }

// lock and unlock hold the shard alone, for what is rare (deletions, Len,
// All). The paths of every hit and every proof (Get, put) choose the lock
// themselves: a method taking either lock is too large to inline.
func (sh *Shard[K, V]) lock() {
	if sh.excl {
		sh.mu.Lock()
	} else {
		sh.rw.Lock()
	}
}

func (sh *Shard[K, V]) unlock() {
	if sh.excl {
		sh.mu.Unlock()
	} else {
		sh.rw.Unlock()
	}
}

// Get returns the value of k, expired or not: the caller judges its
// expiry with its own time (and its own leeway). It does not allocate.
func (sh *Shard[K, V]) Get(k K) (v V, ok bool) {
	var e entry[V]
	if sh.excl {
		sh.mu.Lock()
		e, ok = sh.m[k]
		sh.mu.Unlock()
	} else {
		sh.rw.RLock()
		e, ok = sh.m[k]
		sh.rw.RUnlock()
	}
	return e.v, ok
}

// Add stores v under k until exp unless k holds an entry that has not
// expired at now, and reports whether it stored v. full is true when it did
// not because the shard is full and the map refuses (Refuse).
func (sh *Shard[K, V]) Add(k K, v V, exp, now time.Time) (added, full bool) {
	return sh.put(k, v, exp, now, false, nil)
}

// Put stores v under k until exp, replacing any entry of k, and reports
// whether it did: it does not when the shard is full and the map refuses
// (Refuse).
func (sh *Shard[K, V]) Put(k K, v V, exp, now time.Time) bool {
	stored, _ := sh.put(k, v, exp, now, true, nil)
	return stored
}

// PutIf is Put when keep, asked under the shard's lock, reports true, and
// does nothing otherwise. keep must not call the map, and must not panic.
func (sh *Shard[K, V]) PutIf(k K, v V, exp, now time.Time, keep func() bool) bool {
	stored, _ := sh.put(k, v, exp, now, true, keep)
	return stored
}

// put is Add (replace false) and Put. It unlocks on its one way out, without
// a defer: the replay store calls it on every proof.
func (sh *Shard[K, V]) put(k K, v V, exp, now time.Time, replace bool, keep func() bool) (stored, full bool) {
	if sh.excl {
		sh.mu.Lock()
	} else {
		sh.rw.Lock()
	}
	switch old, present := sh.m[k]; {
	case keep != nil && !keep():
	case present && !replace && now.Before(old.exp):
		// live: kept
	case !present && len(sh.m) >= sh.max && !sh.makeRoom(now):
		full = true
	default:
		sh.m[k] = entry[V]{v: v, exp: exp}
		if sh.next.IsZero() || exp.Before(sh.next) {
			sh.next = exp
		}
		stored = true
	}
	if sh.excl {
		sh.mu.Unlock()
	} else {
		sh.rw.Unlock()
	}
	return stored, full
}

// makeRoom frees a place in a full shard: it sweeps the expired entries,
// and if none was, drops any entry or, for Refuse, reports false.
func (sh *Shard[K, V]) makeRoom(now time.Time) bool {
	if sh.sweep(now) {
		return true
	}
	if sh.full == Refuse {
		return false
	}
	for victim := range sh.m { // map iteration starts at a random entry
		delete(sh.m, victim)
		break
	}
	return true
}

// sweep deletes the entries expired at now and reports whether any was. It
// costs nothing while no entry can have expired (now before next), so a
// shard full of live entries answers in constant time.
func (sh *Shard[K, V]) sweep(now time.Time) bool {
	if now.Before(sh.next) || now.Before(sh.sweepFrom) {
		return false
	}
	if sh.every > 0 {
		sh.sweepFrom = now.Add(sh.every)
	}
	before := len(sh.m)
	var next time.Time
	for k, e := range sh.m {
		switch {
		case !now.Before(e.exp):
			delete(sh.m, k)
		case next.IsZero() || e.exp.Before(next):
			next = e.exp
		}
	}
	sh.next = next
	return len(sh.m) < before
}

// Delete deletes the entry of k, if any.
func (sh *Shard[K, V]) Delete(k K) {
	sh.lock()
	delete(sh.m, k)
	sh.unlock()
}

// DeleteFunc deletes every entry for which del reports true. del runs under
// a shard's lock: it must not call the map.
func (m *Map[K, V]) DeleteFunc(del func(K, V) bool) {
	for i := range m.shards {
		sh := &m.shards[i]
		sh.lock()
		for k, e := range sh.m {
			if del(k, e.v) {
				delete(sh.m, k)
			}
		}
		sh.unlock()
	}
}

// Clear deletes every entry and gives their memory back (the built-in
// clear would keep the maps' buckets).
func (m *Map[K, V]) Clear() {
	for i := range m.shards {
		sh := &m.shards[i]
		sh.lock()
		sh.m = make(map[K]entry[V])
		sh.next = time.Time{}
		sh.unlock()
	}
}

// Len returns the number of entries held, expired ones not yet swept
// included.
func (m *Map[K, V]) Len() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.lock()
		n += len(sh.m)
		sh.unlock()
	}
	return n
}

// Shards returns the number of shards.
func (m *Map[K, V]) Shards() int { return len(m.shards) }

// All yields every entry's key and value, expired or not, one shard at a
// time under its lock: the loop body must not call the map.
func (m *Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for i := range m.shards {
			if !m.shards[i].each(yield) {
				return
			}
		}
	}
}

// each yields the shard's entries under its lock, and reports whether
// yield asked for more.
func (sh *Shard[K, V]) each(yield func(K, V) bool) bool {
	sh.lock()
	defer sh.unlock()
	for k, e := range sh.m {
		if !yield(k, e.v) {
			return false
		}
	}
	return true
}
