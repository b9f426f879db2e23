package registry

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/helsegate/helsegate/cache"
)

// OnCall hears one result per Lookup that needed the registry, from the
// closed set of Call* constants.
func TestHTTPOnCall(t *testing.T) {
	var status atomic.Int64
	status.Store(200)
	rs := newRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		if s := int(status.Load()); s != 200 {
			reply(s, "")(w, r)
			return
		}
		reply(200, recordJSON(orgA, testSvc))(w, r)
	})
	var got []string
	b := cache.NewBreaker("registry", cache.WithHalfOpenAfter(time.Hour))
	h, _ := newSource(t, rs.URL, func(c *HTTPConfig) {
		c.Breaker = b
		c.OnCall = func(result string) { got = append(got, result) }
	})
	lookup := func(ctx context.Context, org string) { _, _ = h.Lookup(ctx, testSvc, org) }

	lookup(context.Background(), orgA) // 200
	status.Store(404)
	lookup(context.Background(), orgA)
	status.Store(403)
	lookup(context.Background(), orgA)
	lookup(context.Background(), orgBadMod) // invalid org: no call, no report
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	lookup(ctx, orgA) // the caller went away before the call
	status.Store(500)
	for range cache.BreakerFailures {
		lookup(context.Background(), orgA)
	}
	lookup(context.Background(), orgA) // the breaker is open

	want := []string{CallOK, CallNotFound, CallRefused, CallCanceled}
	for range cache.BreakerFailures {
		want = append(want, CallError)
	}
	want = append(want, CallBreakerOpen)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("OnCall heard\n %q\nwant\n %q", got, want)
	}
	if b.LastSuccess().IsZero() || b.LastFailure().Before(b.LastSuccess()) {
		t.Errorf("breaker last success %v, last failure %v", b.LastSuccess(), b.LastFailure())
	}
	if h.Breaker() != b || h.BaseURL() != rs.URL {
		t.Error("Breaker or BaseURL do not return the configured ones")
	}
}
