package ttlmap

import (
	"hash/maphash"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"
)

var t0 = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

// clock is the time the tests pass to the map, moved by hand.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) Advance(d time.Duration) { c.now = c.now.Add(d) }

var seed = maphash.MakeSeed()

func hashString(s string) uint64 { return maphash.String(seed, s) }

// strMap is a Map of strings whose keys pick their shard by maphash.
type strMap struct{ *Map[string, int] }

func newStrings(o Options) strMap { return strMap{New[string, int](o)} }

func (m strMap) shard(k string) *Shard[string, int] { return m.Shard(hashString(k)) }
func (m strMap) Get(k string) (int, bool)           { return m.shard(k).Get(k) }
func (m strMap) Delete(k string)                    { m.shard(k).Delete(k) }
func (m strMap) Add(k string, v int, exp, now time.Time) (bool, bool) {
	return m.shard(k).Add(k, v, exp, now)
}
func (m strMap) Put(k string, v int, exp, now time.Time) bool { return m.shard(k).Put(k, v, exp, now) }
func (m strMap) PutIf(k string, v int, exp, now time.Time, keep func() bool) bool {
	return m.shard(k).PutIf(k, v, exp, now, keep)
}

func TestExpiry(t *testing.T) {
	c := &clock{now: t0}
	m := newStrings(Options{Max: 10, Full: Refuse})
	if added, full := m.Add("a", 1, c.Now().Add(time.Second), c.Now()); !added || full {
		t.Fatalf("first Add: added %v, full %v", added, full)
	}
	t.Run("live: Add keeps the entry", func(t *testing.T) {
		c.Advance(999 * time.Millisecond)
		if added, full := m.Add("a", 2, c.Now().Add(time.Second), c.Now()); added || full {
			t.Fatalf("Add over a live entry: added %v, full %v", added, full)
		}
		if v, ok := m.Get("a"); !ok || v != 1 {
			t.Fatalf("Get = %d, %v, want 1, true", v, ok)
		}
	})
	t.Run("expired at its instant: Add replaces it", func(t *testing.T) {
		c.Advance(time.Millisecond)
		if added, _ := m.Add("a", 3, c.Now().Add(time.Second), c.Now()); !added {
			t.Fatal("Add over an expired entry did not store")
		}
		if v, _ := m.Get("a"); v != 3 {
			t.Fatalf("Get = %d, want 3", v)
		}
	})
	t.Run("Get returns an expired entry: the caller judges", func(t *testing.T) {
		c.Advance(time.Hour)
		if v, ok := m.Get("a"); !ok || v != 3 {
			t.Fatalf("Get = %d, %v, want 3, true", v, ok)
		}
	})
	t.Run("Put replaces a live entry", func(t *testing.T) {
		m.Put("b", 1, c.Now().Add(time.Hour), c.Now())
		m.Put("b", 2, c.Now().Add(time.Hour), c.Now())
		if v, _ := m.Get("b"); v != 2 {
			t.Fatalf("Get = %d, want 2", v)
		}
	})
	t.Run("Never never expires", func(t *testing.T) {
		m.Add("forever", 1, Never, c.Now())
		if added, _ := m.Add("forever", 2, Never, c.Now().Add(1000*time.Hour)); added {
			t.Fatal("an entry without expiry was replaced")
		}
	})
}

func TestFullRefuse(t *testing.T) {
	c := &clock{now: t0}
	m := newStrings(Options{Max: 3, Full: Refuse})
	for i := range 3 {
		m.Add(strconv.Itoa(i), i, c.Now().Add(time.Duration(i+1)*time.Second), c.Now())
	}
	if added, full := m.Add("new", 0, c.Now().Add(time.Second), c.Now()); added || !full {
		t.Fatalf("Add to a map full of live entries: added %v, full %v, want refused", added, full)
	}
	if m.Put("new", 0, c.Now().Add(time.Second), c.Now()) {
		t.Fatal("Put to a map full of live entries stored")
	}
	for i := range 3 {
		if _, ok := m.Get(strconv.Itoa(i)); !ok {
			t.Fatalf("live entry %d forgotten", i)
		}
	}
	// An existing key is never refused: it takes no room.
	if !m.Put("2", 20, c.Now().Add(time.Minute), c.Now()) {
		t.Fatal("Put of a held key refused")
	}
	// Once the first expires, it makes room, and only it goes.
	c.Advance(time.Second)
	if added, full := m.Add("new", 0, c.Now().Add(time.Second), c.Now()); !added || full {
		t.Fatalf("Add after an expiry: added %v, full %v", added, full)
	}
	if _, ok := m.Get("0"); ok {
		t.Fatal("the expired entry is still held")
	}
	for _, k := range []string{"1", "2", "new"} {
		if _, ok := m.Get(k); !ok {
			t.Fatalf("entry %s gone", k)
		}
	}
}

func TestFullDropAny(t *testing.T) {
	c := &clock{now: t0}
	t.Run("live entries: one goes, the new one is kept", func(t *testing.T) {
		m := newStrings(Options{Max: 3})
		for i := range 10 {
			if added, full := m.Add(strconv.Itoa(i), i, c.Now().Add(time.Hour), c.Now()); !added || full {
				t.Fatalf("Add %d: added %v, full %v", i, added, full)
			}
			if m.Len() > 3 {
				t.Fatalf("%d entries, bound 3", m.Len())
			}
			if _, ok := m.Get(strconv.Itoa(i)); !ok {
				t.Fatalf("the newest entry %d was dropped", i)
			}
		}
	})
	t.Run("an expired entry goes before a live one", func(t *testing.T) {
		for range 64 { // the arbitrary choice would pick the live one half the time
			m := newStrings(Options{Max: 2})
			m.Add("old", 0, c.Now().Add(time.Second), c.Now())
			m.Add("live", 1, c.Now().Add(time.Hour), c.Now())
			later := c.Now().Add(time.Second)
			m.Add("new", 2, later.Add(time.Hour), later)
			if _, ok := m.Get("live"); !ok || m.Len() != 2 {
				t.Fatalf("the live entry was dropped while an expired one was there (len %d)", m.Len())
			}
		}
	})
}

func TestSweepEvery(t *testing.T) {
	m := newStrings(Options{Max: 2, Full: Refuse, SweepEvery: time.Second})
	m.Add("a", 0, t0.Add(time.Millisecond), t0)
	m.Add("b", 1, t0.Add(2*time.Millisecond), t0)
	now := t0.Add(time.Millisecond)
	if added, _ := m.Add("c", 2, now.Add(time.Hour), now); !added { // sweeps: a goes
		t.Fatal("the first sweep did not make room")
	}
	now = now.Add(time.Millisecond) // b has expired, but the last sweep was a millisecond ago
	if added, full := m.Add("d", 3, now.Add(time.Hour), now); added || !full {
		t.Fatalf("swept again within SweepEvery: added %v, full %v", added, full)
	}
	now = now.Add(time.Second) // a sweep is allowed again
	if added, _ := m.Add("d", 3, now.Add(time.Hour), now); !added {
		t.Fatal("the second sweep did not make room")
	}
	if _, ok := m.Get("b"); ok {
		t.Fatal("the expired entry is still held")
	}
}

func TestPutIf(t *testing.T) {
	m := newStrings(Options{Max: 2})
	if m.PutIf("a", 1, t0.Add(time.Hour), t0, func() bool { return false }) {
		t.Fatal("stored although keep said no")
	}
	if _, ok := m.Get("a"); ok {
		t.Fatal("entry held although keep said no")
	}
	if !m.PutIf("a", 1, t0.Add(time.Hour), t0, func() bool { return true }) {
		t.Fatal("not stored although keep said yes")
	}
}

func TestDelete(t *testing.T) {
	m := newStrings(Options{Max: 5000})
	for i := range 100 {
		m.Put(strconv.Itoa(i), i, t0.Add(time.Hour), t0)
	}
	m.Delete("7")
	if _, ok := m.Get("7"); ok || m.Len() != 99 {
		t.Fatalf("Delete: len %d", m.Len())
	}
	m.DeleteFunc(func(_ string, v int) bool { return v%2 == 0 })
	if m.Len() != 49 {
		t.Fatalf("DeleteFunc left %d entries, want 49", m.Len())
	}
	n := 0
	for _, v := range m.All() {
		if v%2 == 0 {
			t.Fatalf("%d survived DeleteFunc", v)
		}
		n++
	}
	if n != 49 {
		t.Fatalf("All yielded %d entries, want 49", n)
	}
	m.Clear()
	if m.Len() != 0 {
		t.Fatalf("Clear left %d entries", m.Len())
	}
}

func TestSharding(t *testing.T) {
	for _, tc := range []struct {
		name   string
		o      Options
		shards int
	}{
		{"small: exact", Options{Max: 2047}, 1},
		{"one per 1024 to 2047 entries", Options{Max: 10_000}, 8},
		{"at most 64", Options{Max: 10_000_000}, 64},
		{"asked for", Options{Max: 10_000, Shards: 1}, 1},
		{"asked for, a power of two", Options{Max: 10_000, Shards: 12}, 8},
		{"no more than entries", Options{Max: 3, Shards: 16}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := newStrings(tc.o).Shards(); n != tc.shards {
				t.Fatalf("%d shards, want %d", n, tc.shards)
			}
		})
	}
	t.Run("bound held with shards", func(t *testing.T) {
		const max = 10_000
		m := newStrings(Options{Max: max, Full: Refuse})
		stored := 0
		for i := range 2 * max {
			if added, _ := m.Add(strconv.Itoa(i), i, t0.Add(time.Hour), t0); added {
				stored++
			}
		}
		// Shards fill unevenly, so a few refuse before the whole map is full.
		if stored > max || stored < max*9/10 || m.Len() != stored {
			t.Fatalf("stored %d (len %d), want at most %d and close to it", stored, m.Len(), max)
		}
	})
	t.Run("a shard is 128 bytes", func(t *testing.T) {
		if n := unsafe.Sizeof(Shard[string, int]{}); n != 128 {
			t.Fatalf("a shard is %d bytes", n)
		}
	})
}

// TestHitAllocs: a hit allocates nothing.
func TestHitAllocs(t *testing.T) {
	type key struct{ a, b string }
	m := New[key, *int](Options{Max: 100_000})
	v := 1
	k := key{"s", "o"}
	m.Shard(maphash.String(seed, k.b)).Put(k, &v, t0.Add(time.Hour), t0)
	if n := testing.AllocsPerRun(100, func() {
		if _, ok := m.Shard(maphash.String(seed, k.b)).Get(k); !ok {
			t.Fatal("miss")
		}
	}); n != 0 {
		t.Fatalf("a hit allocates %.0f times", n)
	}
}

// TestConcurrent: readers and writers at once (run with -race).
func TestConcurrent(t *testing.T) {
	for _, o := range []Options{{Full: DropAny}, {Full: Refuse}, {Full: Refuse, WriteMostly: true}} {
		o.Max = 4096
		m := newStrings(o)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				now := t0
				for i := range 5000 {
					k := strconv.Itoa(w*10_000 + i%3000)
					now = now.Add(time.Millisecond)
					m.Add(k, i, now.Add(time.Second), now)
					m.Get(k)
					if i%500 == 0 {
						m.DeleteFunc(func(_ string, v int) bool { return v%7 == 0 })
						_ = m.Len()
					}
				}
			})
		}
		wg.Wait()
		if m.Len() > 4096 {
			t.Fatalf("%d entries, bound 4096", m.Len())
		}
	}
}

func BenchmarkGet(b *testing.B) {
	m := newStrings(Options{Max: 100_000})
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
		m.Put(keys[i], i, t0.Add(time.Hour), t0)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Get(keys[i%len(keys)])
		i++
	}
}
