package integration

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// upstream is a stand-in API: it answers 200 "upstream ok" and remembers the
// last request it saw.
type upstream struct {
	srv *httptest.Server

	mu     sync.Mutex
	hits   int
	method string
	path   string
	header http.Header
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hits++
		u.method = r.Method
		u.path = r.URL.Path
		u.header = r.Header.Clone()
		u.mu.Unlock()
		_, _ = io.WriteString(w, "upstream ok")
	}))
	if t != nil {
		t.Cleanup(u.srv.Close)
	}
	return u
}

// URL is the upstream's base URL for reverse_proxy.
func (u *upstream) URL() string { return u.srv.URL }

// reset forgets the last request.
func (u *upstream) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.hits, u.method, u.path, u.header = 0, "", "", nil
}

// last returns the number of requests since the last reset and the last one's method, path and headers.
func (u *upstream) last() (hits int, method, path string, header http.Header) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits, u.method, u.path, u.header.Clone()
}
