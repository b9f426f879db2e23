package registry

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/helsegate/helsegate/authz"
)

// SourceFile is the Answer.Source of the file source.
const SourceFile = "file"

// DefaultPollInterval is how often File's poller looks at the file.
const DefaultPollInterval = time.Second

// FileOption configures NewFile.
type FileOption func(*File)

// WithOnReload sets fn to be called after every successful reload (Reload,
// or Start's poller seeing a change), once the new set is in use; not after
// the first load, in NewFile. A cache in front of the File passes its
// eviction here, so that a change of the file is seen at once, not after the
// cache's TTL. fn runs on the goroutine that reloaded, with no lock held.
func WithOnReload(fn func()) FileOption {
	return func(f *File) { f.onReload = fn }
}

// File is the membership file source: the authorizations of a JSON document
// {"authorizations":[...]}, held in memory. Lookup is a map lookup; an
// (service, org) absent from the file is a definite no. Start polls the file
// and reloads it when it changes; a file that no longer parses or validates
// is logged and the last good set is kept. It is safe for concurrent use.
type File struct {
	path     string
	clock    authz.Clock
	log      *zap.Logger
	interval time.Duration
	onReload func() // nil: none

	set atomic.Pointer[fileSet]

	mu      sync.Mutex // serializes loads; guards the fields below
	seen    stamp      // the file as of the last load attempt
	started bool
}

// fileSet is one loaded generation of the file. It is never modified.
type fileSet struct {
	recs     map[key]authz.Authorization
	loadedAt time.Time
}

// stamp is what the poller compares: modification time and size, or the
// error of stat (so a missing file is logged once, not every second).
type stamp struct {
	mod  time.Time
	size int64
	err  string
}

// same reports whether s and o describe the same state of the file.
func (s stamp) same(o stamp) bool {
	return s.mod.Equal(o.mod) && s.size == o.size && s.err == o.err
}

var _ authz.Membership = (*File)(nil)

// NewFile loads and validates the file at path. An error (unreadable file,
// bad JSON, an invalid or duplicate record, named by its index) means the
// configuration is wrong. It starts no goroutine: call Start for reloads.
// A nil clock is authz.SystemClock; a nil logger logs nothing.
func NewFile(path string, clock authz.Clock, logger *zap.Logger, opts ...FileOption) (*File, error) {
	if clock == nil {
		clock = authz.SystemClock
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	f := &File{path: path, clock: clock, log: logger, interval: DefaultPollInterval}
	for _, o := range opts {
		o(f)
	}
	f.mu.Lock()
	_, err := f.load()
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Lookup answers from the set last loaded: a copy of the record, or a nil
// record when the file does not authorize org for service. FetchedAt is now:
// the loaded file is the source of truth at every moment (a change is picked
// up by the poller), so an answer is as fresh as the lookup. It never fails.
func (f *File) Lookup(_ context.Context, service, org string) (authz.Answer, error) {
	s := f.set.Load()
	ans := authz.Answer{FetchedAt: f.clock.Now(), Source: SourceFile}
	if r, ok := s.recs[key{service, org}]; ok {
		ans.Record = cloneRecord(r)
	}
	return ans, nil
}

// cloneRecord returns a copy the caller may keep or modify without touching
// the shared set.
func cloneRecord(r authz.Authorization) *authz.Authorization {
	if r.ValidFrom != nil {
		t := *r.ValidFrom
		r.ValidFrom = &t
	}
	if r.ValidTo != nil {
		t := *r.ValidTo
		r.ValidTo = &t
	}
	return &r
}

// LoadedAt returns when the set in use was loaded.
func (f *File) LoadedAt() time.Time { return f.set.Load().loadedAt }

// Path returns the path of the file.
func (f *File) Path() string { return f.path }

// Len returns the number of authorizations in the set last loaded.
func (f *File) Len() int { return len(f.set.Load().recs) }

// Reload reads the file now. On error the last good set stays in use and the
// error says why (it never quotes the file); on success the WithOnReload
// function is called.
func (f *File) Reload() error {
	f.mu.Lock()
	_, err := f.load()
	f.mu.Unlock()
	if err == nil {
		f.reloaded()
	}
	return err
}

// reloaded calls the WithOnReload function, if any; f.mu is not held.
func (f *File) reloaded() {
	if f.onReload != nil {
		f.onReload()
	}
}

// load reads, validates and installs the file; f.mu is held. It records the
// file's stamp as seen before reading, so a write during the read shows up
// as a change on the next poll.
func (f *File) load() (int, error) {
	f.seen = stampOf(f.path)
	fh, err := os.Open(f.path)
	if err != nil {
		return 0, fmt.Errorf("membership file: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxFile+1))
	if err != nil {
		return 0, fmt.Errorf("membership file %s: reading: %w", f.path, err)
	}
	if len(b) > maxFile {
		return 0, fmt.Errorf("membership file %s: larger than %d bytes", f.path, maxFile)
	}
	recs, err := parseFile(b)
	if err != nil {
		return 0, fmt.Errorf("membership file %s: %w", f.path, err)
	}
	f.set.Store(&fileSet{recs: recs, loadedAt: f.clock.Now()})
	return len(recs), nil
}
