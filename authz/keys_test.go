package authz

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// fakeIssuer serves discovery and a JWKS whose keys the test changes.
type fakeIssuer struct {
	srv        *httptest.Server
	mu         sync.Mutex
	keys       []jwk.Key
	down       bool
	issuerSays string
	jwksHits   atomic.Int64
	// hang, when set, holds every JWKS request until it is closed; each
	// held request is announced on held.
	hang chan struct{}
	held chan struct{}
}

func newFakeIssuer(t *testing.T) *fakeIssuer {
	fi := &fakeIssuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		fi.jwksHits.Add(1) // counts every request to the issuer
		fi.mu.Lock()
		defer fi.mu.Unlock()
		if fi.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		iss := fi.issuerSays
		if iss == "" {
			iss = fi.srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss, "jwks_uri": fi.srv.URL + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		fi.jwksHits.Add(1)
		fi.mu.Lock()
		hang, held := fi.hang, fi.held
		fi.mu.Unlock()
		if hang != nil {
			held <- struct{}{}
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}
		fi.mu.Lock()
		defer fi.mu.Unlock()
		if fi.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		set := jwk.NewSet()
		for _, k := range fi.keys {
			_ = set.AddKey(k)
		}
		_ = json.NewEncoder(w).Encode(set)
	})
	fi.srv = httptest.NewServer(mux)
	t.Cleanup(fi.srv.Close)
	return fi
}

func (fi *fakeIssuer) addKey(t *testing.T, kid string) {
	testKeys(t)
	k, err := jwk.FromRaw(issuerPriv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_ = k.Set(jwk.KeyIDKey, kid)
	fi.mu.Lock()
	fi.keys = append(fi.keys, k)
	fi.mu.Unlock()
}

func (fi *fakeIssuer) setDown(down bool) {
	fi.mu.Lock()
	fi.down = down
	fi.mu.Unlock()
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newKeys(t *testing.T, fi *fakeIssuer, clock Clock) *IssuerKeys {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return NewIssuerKeys(ctx, fi.srv.URL, "", fi.srv.Client(), clock, nil)
}

func TestIssuerKeysDiscoveryAndLookup(t *testing.T) {
	fi := newFakeIssuer(t)
	fi.addKey(t, "K1")
	k := newKeys(t, fi, &testClock{now: testNow})
	key, err := k.Key(context.Background(), "K1")
	if err != nil || key.KeyID() != "K1" {
		t.Fatalf("want K1, got %v %v", key, err)
	}
	if _, err := k.Key(context.Background(), "nope"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want ErrUnknownKey, got %v", err)
	}
}

func TestIssuerKeysDiscoveryIssuerMustMatch(t *testing.T) {
	fi := newFakeIssuer(t)
	fi.addKey(t, "K1")
	fi.issuerSays = "https://elsewhere.example"
	k := newKeys(t, fi, &testClock{now: testNow})
	if _, err := k.Key(context.Background(), "K1"); err == nil || errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want a discovery error for a foreign issuer, got %v", err)
	}
}

func TestIssuerKeysRotationAndRateLimit(t *testing.T) {
	fi := newFakeIssuer(t)
	fi.addKey(t, "K1")
	clock := &testClock{now: testNow}
	k := newKeys(t, fi, clock)
	if _, err := k.Key(context.Background(), "K1"); err != nil {
		t.Fatal(err)
	}
	base := fi.jwksHits.Load()

	// A new signing key right after start is found by one refresh.
	fi.addKey(t, "K2")
	if _, err := k.Key(context.Background(), "K2"); err != nil {
		t.Fatalf("rotated key not found: %v", err)
	}
	if got := fi.jwksHits.Load() - base; got != 1 {
		t.Fatalf("want 1 refresh for the rotated kid, got %d", got)
	}

	// Random kids, many at once, cost no further fetch within 30 s.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, _ = k.Key(context.Background(), "random-"+string(rune('A'+i)))
		}(i)
	}
	wg.Wait()
	if got := fi.jwksHits.Load() - base; got != 1 {
		t.Fatalf("unknown kids refreshed the key set %d times within 30 s", got)
	}

	// After the interval, one more refresh is allowed.
	clock.advance(UnknownKidRefreshInterval + time.Second)
	for i := 0; i < 5; i++ {
		_, _ = k.Key(context.Background(), "still-unknown")
	}
	if got := fi.jwksHits.Load() - base; got != 2 {
		t.Fatalf("want exactly one more refresh after the interval, got %d total", got)
	}
}

func TestIssuerKeysOutageKeepsLastKeys(t *testing.T) {
	fi := newFakeIssuer(t)
	fi.addKey(t, "K1")
	clock := &testClock{now: testNow}
	k := newKeys(t, fi, clock)
	if _, err := k.Key(context.Background(), "K1"); err != nil {
		t.Fatal(err)
	}
	fi.setDown(true)
	clock.advance(time.Minute)
	if _, err := k.Key(context.Background(), "K1"); err != nil {
		t.Fatalf("known key lost during an outage: %v", err)
	}
	// An unknown kid during the outage is unknown, not a hang or a crash.
	if _, err := k.Key(context.Background(), "K9"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want ErrUnknownKey during an outage, got %v", err)
	}
}

func TestIssuerKeysFirstFetchFailureFailsFast(t *testing.T) {
	fi := newFakeIssuer(t)
	fi.setDown(true)
	clock := &testClock{now: testNow}
	k := newKeys(t, fi, clock)
	if _, err := k.Key(context.Background(), "K1"); err == nil || errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want unavailable, got %v", err)
	}
	hits := fi.jwksHits.Load()
	for i := 0; i < 10; i++ {
		_, _ = k.Key(context.Background(), "K1")
	}
	if fi.jwksHits.Load() != hits {
		t.Fatal("requests kept hitting a down issuer within the retry interval")
	}
	fi.setDown(false)
	fi.addKey(t, "K1")
	clock.advance(retryAfterFailure + time.Second)
	if _, err := k.Key(context.Background(), "K1"); err != nil {
		t.Fatalf("no recovery after the issuer came back: %v", err)
	}
}

// A refresh for an unknown kid against an issuer that hangs must not hold
// up requests whose kid is known: they are answered from the last good set.
func TestIssuerKeysKnownKidDoesNotWaitForRefresh(t *testing.T) {
	fi := newFakeIssuer(t)
	fi.addKey(t, "k1")
	k := newKeys(t, fi, &testClock{now: time.Unix(1_700_000_000, 0)})
	ctx := context.Background()
	if _, err := k.Key(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	hang, held := make(chan struct{}), make(chan struct{}, 1)
	fi.mu.Lock()
	fi.hang, fi.held = hang, held
	fi.mu.Unlock()
	defer close(hang)

	unknown := make(chan error, 1)
	go func() { _, err := k.Key(ctx, "k-unknown"); unknown <- err }()
	<-held // the refresh is at the issuer, and stays there

	known := make(chan error, 1)
	go func() { _, err := k.Key(ctx, "k1"); known <- err }()
	select {
	case err := <-known:
		if err != nil {
			t.Fatalf("known kid during a refresh: %v", err)
		}
	case err := <-unknown:
		t.Fatalf("the unknown-kid refresh ended before the issuer answered: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("a known kid waited for the unknown-kid refresh")
	}
}
