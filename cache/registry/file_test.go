package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// goodFile authorizes orgA and orgB for kjernejournal; orgB is suspended.
const goodFile = `{"authorizations":[
	{"organization":"917897468","service":"kjernejournal","member":true,"status":"active",
	 "valid_from":"2025-01-01T00:00:00Z","valid_to":null},
	{"organization":"974760002","service":"kjernejournal","member":true,"status":"suspended","valid_to":null},
	{"organization":"917897468","service":"persontjenesten","member":true,"status":"active",
	 "valid_from":"2025-01-01T00:00:00Z","valid_to":"2027-01-01T00:00:00Z"}
]}`

// writeFile writes body to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// replaceFile replaces path's content atomically, as a deploy would, and
// moves its modification time forward so a change is seen whatever the
// file system's timestamp granularity.
func replaceFile(t *testing.T, path, body string) {
	t.Helper()
	tmp := writeFile(t, filepath.Dir(path), ".tmp", body)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	next := fi.ModTime().Add(time.Second)
	if err := os.Chtimes(tmp, next, next); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileLookup(t *testing.T) {
	clock := newFakeClock()
	loaded := clock.Now()
	f, err := NewFile(writeFile(t, t.TempDir(), "members.json", goodFile), clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour) // FetchedAt is the lookup time: the file is always current
	looked := loaded.Add(time.Hour)
	tests := []struct {
		name, service, org string
		wantStatus         string // "" for no record
		wantOK             bool
	}{
		{"member", "kjernejournal", orgA, "active", true},
		{"suspended", "kjernejournal", orgB, "suspended", false},
		{"other service", "persontjenesten", orgA, "active", true},
		{"org not in file", "kjernejournal", orgC, "", false},
		{"service not in file", "reseptformidleren", orgA, "", false},
		{"service authorized for another org only", "persontjenesten", orgB, "", false},
		{"invalid org", "kjernejournal", orgBadMod, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ans, err := f.Lookup(context.Background(), tt.service, tt.org)
			if err != nil {
				t.Fatal(err)
			}
			if ans.Source != SourceFile || !ans.FetchedAt.Equal(looked) {
				t.Errorf("Source %q FetchedAt %v, want file %v", ans.Source, ans.FetchedAt, looked)
			}
			switch {
			case tt.wantStatus == "" && ans.Record != nil:
				t.Fatalf("record = %+v, want none", ans.Record)
			case tt.wantStatus != "" && (ans.Record == nil || ans.Record.Status != tt.wantStatus ||
				ans.Record.Organization != tt.org || ans.Record.Service != tt.service):
				t.Fatalf("record = %+v, want %s for %s/%s", ans.Record, tt.wantStatus, tt.service, tt.org)
			}
			if ok, reason := ans.Decide(clock.Now()); ok != tt.wantOK {
				t.Errorf("Decide = %v (%s), want %v", ok, reason, tt.wantOK)
			}
		})
	}
	t.Run("records are copies", func(t *testing.T) {
		a, _ := f.Lookup(context.Background(), "persontjenesten", orgA)
		a.Record.Status = "changed"
		*a.Record.ValidTo = time.Time{}
		b, _ := f.Lookup(context.Background(), "persontjenesten", orgA)
		if b.Record.Status != "active" || b.Record.ValidTo.IsZero() {
			t.Errorf("a caller's change reached the shared set: %+v", b.Record)
		}
	})
}

func TestNewFileRejects(t *testing.T) {
	rec := func(org, extra string) string {
		return `{"organization":"` + org + `","service":"kjernejournal","member":true,"status":"active"` + extra + `}`
	}
	tests := []struct {
		name, body, wantErr string
	}{
		{"invalid org number names the index", `{"authorizations":[` + rec(orgA, "") + `,` + rec(orgBadMod, "") + `]}`,
			"authorizations[1]: organization is not a valid"},
		{"short org number", `{"authorizations":[` + rec("12345", "") + `]}`, "authorizations[0]: organization"},
		{"empty service", `{"authorizations":[{"organization":"917897468","service":"","status":"active"}]}`,
			"authorizations[0]: service is empty"},
		{"empty status", `{"authorizations":[{"organization":"917897468","service":"kjernejournal","member":true}]}`,
			"authorizations[0]: status is empty"},
		{"valid_to equal to valid_from", `{"authorizations":[` +
			rec(orgA, `,"valid_from":"2026-01-01T00:00:00Z","valid_to":"2026-01-01T00:00:00Z"`) + `]}`,
			"authorizations[0]: valid_to is not after valid_from"},
		{"valid_to before valid_from", `{"authorizations":[` + rec(orgB, "") + `,` +
			rec(orgA, `,"valid_from":"2026-01-01T00:00:00Z","valid_to":"2025-01-01T00:00:00Z"`) + `]}`,
			"authorizations[1]: valid_to is not after valid_from"},
		{"duplicate", `{"authorizations":[` + rec(orgA, "") + `,` + rec(orgB, "") + `,` + rec(orgA, "") + `]}`,
			"authorizations[2]: duplicate of authorizations[0]"},
		{"null record", `{"authorizations":[null]}`, "authorizations[0]"},
		{"bad JSON", `{"authorizations":[`, "decoding"},
		{"bad time", `{"authorizations":[` + rec(orgA, `,"valid_to":"tomorrow"`) + `]}`, "decoding"},
		{"unknown field", `{"authorizations":[` + rec(orgA, `,"valid_too":"2026-01-01T00:00:00Z"`) + `]}`, "unknown field"},
		{"missing authorizations", `{}`, "missing"},
		{"member twice", `{"authorizations":[` + rec(orgA, `,"member":false`) + `]}`, "twice"},
		{"member and MEMBER", `{"authorizations":[` + rec(orgA, `,"MEMBER":false`) + `]}`, "MEMBER"},
		{"trailing data", `{"authorizations":[]} {}`, "after the top-level object"},
		{"empty file", ``, "decoding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFile(writeFile(t, t.TempDir(), "members.json", tt.body), newFakeClock(), nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), orgBadMod) || strings.Contains(err.Error(), orgA) {
				t.Errorf("error quotes an organization number: %v", err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := NewFile(filepath.Join(t.TempDir(), "nope.json"), nil, nil)
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want not-exist", err)
		}
	})
	t.Run("an empty list is valid", func(t *testing.T) {
		f, err := NewFile(writeFile(t, t.TempDir(), "members.json", `{"authorizations":[]}`), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if f.Len() != 0 {
			t.Errorf("Len = %d", f.Len())
		}
	})
}

func TestFileReload(t *testing.T) {
	const onlyC = `{"authorizations":[{"organization":"974760010","service":"kjernejournal","member":true,"status":"active"}]}`
	const broken = `{"authorizations":[{"organization":"917897469","service":"kjernejournal","member":true,"status":"active"}]}`

	has := func(f *File, org string) bool {
		ans, _ := f.Lookup(context.Background(), "kjernejournal", org)
		return ans.Record != nil
	}
	tests := []struct {
		name string
		// reload makes f see the change, and waits for it if it must.
		reload func(t *testing.T, f *File, want func() bool) error
	}{
		{"Reload", func(t *testing.T, f *File, _ func() bool) error { return f.Reload() }},
		{"poller", func(t *testing.T, f *File, want func() bool) error {
			deadline := time.Now().Add(5 * time.Second)
			for !want() {
				if time.Now().After(deadline) {
					t.Fatal("the poller did not pick up the change within 5s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, logs := observed()
			clock := newFakeClock()
			path := writeFile(t, t.TempDir(), "members.json", goodFile)
			f, err := NewFile(path, clock, log, WithPollInterval(10*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "poller" {
				f.Start(t.Context())
			}
			if !has(f, orgA) || has(f, orgC) {
				t.Fatal("first load wrong")
			}

			clock.Advance(time.Minute)
			replaceFile(t, path, onlyC)
			if err := tt.reload(t, f, func() bool { return has(f, orgC) }); err != nil {
				t.Fatal(err)
			}
			if has(f, orgA) || !has(f, orgC) {
				t.Fatal("the change was not loaded")
			}
			if ans, _ := f.Lookup(context.Background(), "kjernejournal", orgC); !ans.FetchedAt.Equal(clock.Now()) {
				t.Errorf("FetchedAt %v, want the reload time %v", ans.FetchedAt, clock.Now())
			}

			// A broken file keeps the last good set and says why, once.
			replaceFile(t, path, broken)
			errLogged := func() bool { return logs.FilterLevelExact(zapErrorLevel).Len() > 0 }
			err = tt.reload(t, f, errLogged)
			if tt.name == "Reload" {
				if err == nil || !strings.Contains(err.Error(), "authorizations[0]") {
					t.Fatalf("Reload err = %v, want the broken record named", err)
				}
			} else {
				time.Sleep(50 * time.Millisecond) // several more polls of the same broken file
				errs := logs.FilterLevelExact(zapErrorLevel).All()
				if len(errs) != 1 {
					t.Fatalf("%d Error logs for one broken change, want 1", len(errs))
				}
				txt := entryText(errs[0])
				if !strings.Contains(txt, "authorizations[0]") || strings.Contains(txt, `"authorizations"`) {
					t.Errorf("log should say why without the content: %s", txt)
				}
			}
			if !has(f, orgC) || f.Len() != 1 {
				t.Error("the last good set was not kept")
			}

			// Fixing the file is picked up again.
			replaceFile(t, path, goodFile)
			if err := tt.reload(t, f, func() bool { return has(f, orgA) }); err != nil {
				t.Fatal(err)
			}
			if !has(f, orgA) || has(f, orgC) {
				t.Error("the fixed file was not loaded")
			}
		})
	}
}

// The cache in front of a File evicts on every successful reload: a member
// removed from the file is refused right after the reload, with the clock
// standing still (nowhere near the cache's TTL); a broken file evicts
// nothing.
func TestFileReloadEvictsCache(t *testing.T) {
	const onlyC = `{"authorizations":[{"organization":"974760010","service":"kjernejournal","member":true,"status":"active"}]}`
	for _, tt := range []struct {
		name   string
		reload func(t *testing.T, f *File, want func() bool)
	}{
		{"Reload", func(t *testing.T, f *File, _ func() bool) {
			if err := f.Reload(); err != nil {
				t.Fatal(err)
			}
		}},
		{"poller", func(t *testing.T, f *File, want func() bool) {
			deadline := time.Now().Add(5 * time.Second)
			for !want() {
				if time.Now().After(deadline) {
					t.Fatal("the reload did not reach the cache within 5s")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			path := writeFile(t, t.TempDir(), "members.json", goodFile)
			var c *cache.CachedMembership
			var reloads atomic.Int32
			f, err := NewFile(path, clock, nil, WithPollInterval(10*time.Millisecond), WithOnReload(func() {
				reloads.Add(1)
				c.Invalidate(context.Background(), "", "")
			}))
			if err != nil {
				t.Fatal(err)
			}
			if reloads.Load() != 0 {
				t.Fatal("the first load called the reload hook")
			}
			c = cache.NewCachedMembership(f, cache.MembershipCacheOptions{Clock: clock})
			if tt.name == "poller" {
				f.Start(t.Context())
			}
			decide := func(org string) (bool, string) {
				ans, err := c.Lookup(context.Background(), "kjernejournal", org)
				if err != nil {
					t.Fatal(err)
				}
				ok, _ := ans.Decide(clock.Now())
				return ok, ans.Source
			}
			for range 2 { // the second is an in-process hit
				if ok, _ := decide(orgA); !ok {
					t.Fatal("orgA refused before the change")
				}
			}
			if ok, src := decide(orgA); src != cache.TierLocal || !ok {
				t.Fatalf("orgA not held in-process: from %s", src)
			}

			clock.Advance(time.Second) // far below the positive TTL
			replaceFile(t, path, onlyC)
			tt.reload(t, f, func() bool { return reloads.Load() > 0 })
			if ok, src := decide(orgA); ok || src != SourceFile {
				t.Fatalf("the removed member: allowed %v, from %s; want refused by the file", ok, src)
			}
			if ok, _ := decide(orgC); !ok {
				t.Fatal("the added member refused")
			}

			// A broken file is not a reload: nothing is evicted.
			before := reloads.Load()
			replaceFile(t, path, `{"authorizations":[`)
			if tt.name == "Reload" {
				if err := f.Reload(); err == nil {
					t.Fatal("a broken file reloaded")
				}
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			if reloads.Load() != before {
				t.Fatal("a broken file called the reload hook")
			}
			if ok, src := decide(orgC); !ok || src != cache.TierLocal {
				t.Fatalf("after a broken file: allowed %v, from %s; want the cached answer", ok, src)
			}
		})
	}
}

func TestFilePollerMissingFile(t *testing.T) {
	log, logs := observed()
	path := writeFile(t, t.TempDir(), "members.json", goodFile)
	f, err := NewFile(path, nil, log, WithPollInterval(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.Start(ctx)
	f.Start(ctx) // a second Start does nothing
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterLevelExact(zapErrorLevel).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a vanished file was not logged")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := logs.FilterLevelExact(zapErrorLevel).Len(); n != 1 {
		t.Errorf("%d Error logs for one vanished file, want 1", n)
	}
	if ans, _ := f.Lookup(context.Background(), "kjernejournal", orgA); ans.Record == nil {
		t.Error("the last good set was dropped")
	}
}

var _ authz.Membership = (*File)(nil)
