package authz

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// Status and onRefresh see every fetch of the key set once: the first, the
// refresh for an unknown kid, and failures (discovery included).
func TestIssuerKeysStatusAndOnRefresh(t *testing.T) {
	fi := newFakeIssuer(t)
	clock := &testClock{now: testNow}
	var mu sync.Mutex
	var heard []string
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k := NewIssuerKeys(ctx, fi.srv.URL, "", fi.srv.Client(), clock, func(ok bool) {
		mu.Lock()
		defer mu.Unlock()
		heard = append(heard, map[bool]string{true: "ok", false: "error"}[ok])
	})
	if st := k.Status(); !st.LastSuccess.IsZero() || !st.LastFailure.IsZero() || st.Issuer != fi.srv.URL {
		t.Fatalf("before any request: %+v", st)
	}

	// The issuer is down at the first request: a failure, no success.
	fi.setDown(true)
	if _, err := k.Key(context.Background(), "K1"); err == nil {
		t.Fatal("want an error")
	}
	st := k.Status()
	if !st.LastSuccess.IsZero() || !st.LastFailure.Equal(testNow) {
		t.Fatalf("after a failed first fetch: %+v", st)
	}

	// Back up: a success, with the number of keys.
	fi.setDown(false)
	fi.addKey(t, "K1")
	clock.advance(retryAfterFailure + time.Second)
	if _, err := k.Key(context.Background(), "K1"); err != nil {
		t.Fatal(err)
	}
	st = k.Status()
	if !st.LastSuccess.Equal(clock.Now()) || st.Keys != 1 {
		t.Fatalf("after a good fetch: %+v", st)
	}

	// An unknown kid refreshes once more.
	fi.addKey(t, "K2")
	if _, err := k.Key(context.Background(), "K2"); err != nil {
		t.Fatal(err)
	}
	if st := k.Status(); st.Keys != 2 {
		t.Fatalf("after the refresh: %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(heard, " "); got != "error ok ok" {
		t.Fatalf("onRefresh heard %q, want \"error ok ok\"", got)
	}
}
