package cache

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The publishing process evicts its own in-process tier at once, without
// waiting for its subscription (here it has none), and Redis forgets the
// entry as before.
func TestMembershipPublishEvictsOwnTier(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	a := newReplica(t, prefix, clock, MembershipCacheOptions{})
	b := newReplica(t, prefix, clock, MembershipCacheOptions{})
	lookup(t, a.c, testService, testOrg)
	lookup(t, a.c, testService, otherOrg)

	n, err := a.c.Publish(context.Background(), testService, testOrg)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("PUBLISH counted %d receivers, with nobody subscribed", n)
	}
	if held(a, testService, testOrg) {
		t.Fatal("the publisher still holds the pair it invalidated")
	}
	if !held(a, testService, otherOrg) {
		t.Fatal("the publisher evicted an org it did not name")
	}
	if ans := lookup(t, b.c, testService, testOrg); ans.Source != TierRegistry {
		t.Fatalf("the Redis entry survived the publication: B answered from %s", ans.Source)
	}

	// A wildcard: the publisher moves to the new generation at once, so its
	// next miss does not find the old entries in Redis.
	lookup(t, a.c, testService, testOrg)
	if _, err := a.c.Publish(context.Background(), testService, ""); err != nil {
		t.Fatal(err)
	}
	if a.c.Len() != 0 {
		t.Fatalf("the publisher holds %d entries after invalidating the service", a.c.Len())
	}
	calls := int(a.reg.calls.Load())
	if ans := lookup(t, a.c, testService, otherOrg); ans.Source != TierRegistry {
		t.Fatalf("after the wildcard the publisher answered from %s", ans.Source)
	}
	expectCalls(t, a.reg, calls+1)

	// The count is what Redis says: a subscriber makes it 1.
	subscribed(t, prefix, b)
	if n, err := a.c.Publish(context.Background(), testService, testOrg); err != nil || n != 1 {
		t.Fatalf("Publish with one subscriber = %d, %v; want 1", n, err)
	}
}

// With Redis unreachable the publisher still evicts its own tier, and the
// error names both steps.
func TestMembershipPublishRedisDownEvictsOwnTier(t *testing.T) {
	a := newReplica(t, "helsegate-test:", newFakeClock(), MembershipCacheOptions{Redis: deadRedis(t)})
	lookup(t, a.c, testService, testOrg) // Redis fails: the registry answers, kept in-process
	if !held(a, testService, testOrg) {
		t.Fatal("not cached")
	}
	n, err := a.c.Publish(context.Background(), testService, testOrg)
	var ie *InvalidationError
	if !errors.As(err, &ie) || ie.Forget == nil || ie.Publish == nil || n != 0 {
		t.Fatalf("Publish on a dead Redis = %d, %v; want 0 and an InvalidationError naming both steps", n, err)
	}
	if held(a, testService, testOrg) {
		t.Fatal("the publisher kept the pair because Redis was down")
	}
	// The package-level Publish says the same.
	if _, err := Publish(context.Background(), deadRedis(t), "", testService, testOrg); !errors.As(err, &ie) || ie.Publish == nil {
		t.Fatalf("Publish on a dead Redis: %v", err)
	}
}

// Caches that share the Redis and prefix of a publication evict their own
// tier with EvictLocal, and a wildcard makes them read the generation again.
func TestMembershipEvictLocal(t *testing.T) {
	clock := newFakeClock()
	prefix := testPrefix(t, testRedis(t))
	a := newReplica(t, prefix, clock, MembershipCacheOptions{})
	b := newReplica(t, prefix, clock, MembershipCacheOptions{})
	lookup(t, b.c, testService, testOrg)
	lookup(t, b.c, testService, otherOrg)
	if _, err := a.c.Publish(context.Background(), "", ""); err != nil {
		t.Fatal(err)
	}
	b.c.EvictLocal("", "")
	if b.c.Len() != 0 {
		t.Fatal("EvictLocal left entries")
	}
	if ans := lookup(t, b.c, testService, testOrg); ans.Source != TierRegistry {
		t.Fatalf("after a wildcard and EvictLocal, B answered from %s: it kept the old generation", ans.Source)
	}
}

// flakyProxy forwards TCP connections to Redis; cut closes every connection
// and refuses new ones (as a dead Redis would) until mend.
type flakyProxy struct {
	ln     net.Listener
	target string
	down   atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func startFlakyProxy(t *testing.T, target string) *flakyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *flakyProxy) addr() string { return p.ln.Addr().String() }

func (p *flakyProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			_ = c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
		go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
	}
}

func (p *flakyProxy) cut() {
	p.down.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *flakyProxy) mend() { p.down.Store(false) }

// A gap in the subscription (Redis unreachable for a while, every attempt
// failing) clears the in-process tier when the subscription is back:
// invalidations published in the gap were missed, and what was cached during
// it may be what they named.
func TestMembershipResubscribeAfterGapClearsTier(t *testing.T) {
	admin := testRedis(t)
	prefix := testPrefix(t, admin)
	proxy := startFlakyProxy(t, testRedisAddr())
	opts, err := RedisConfig{Addrs: []string{proxy.addr()}}.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewUniversalClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	var ev events
	b := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{Redis: client, OnInvalidation: ev.hook})
	subscribed(t, prefix, b)
	lookup(t, b.c, testService, testOrg)

	proxy.cut()
	// Cached during the gap (Redis fails: from the registry), and
	// invalidated during the gap where B cannot hear it.
	lookup(t, b.c, testService, otherOrg)
	if _, err := Publish(context.Background(), admin, prefix, testService, otherOrg); err != nil {
		t.Fatal(err)
	}
	// Let several attempts fail.
	time.Sleep(3 * subscribeMaxBackoff)
	if ev.get(InvalidationResubscribed) != 0 {
		t.Fatal("resubscribed while Redis was unreachable")
	}
	if !held(b, testService, otherOrg) {
		t.Fatal("the tier was cleared before the subscription was back")
	}

	proxy.mend()
	// Attempts go on at most subscribeMaxBackoff apart: back well within 2 s.
	eventually(t, 2*time.Second, "resubscribed after the gap", func() bool { return ev.get(InvalidationResubscribed) == 1 })
	if held(b, testService, testOrg) || held(b, testService, otherOrg) {
		t.Fatal("resubscribed after a gap, yet B kept entries an invalidation in the gap may have named")
	}
	lookup(t, b.c, testService, testOrg)
	if _, err := Publish(context.Background(), admin, prefix, testService, testOrg); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "B applies after the gap", func() bool { return !held(b, testService, testOrg) })
	if n := ev.get(InvalidationResubscribed); n != 1 {
		t.Fatalf("%d resubscriptions counted for one gap", n)
	}
}

// A subscription confirmation while already subscribed means go-redis dialed
// again on its own: the tier is cleared as for any other gap.
func TestMembershipSilentResubscribeClearsTier(t *testing.T) {
	prefix := testPrefix(t, testRedis(t))
	var ev events
	b := newReplica(t, prefix, newFakeClock(), MembershipCacheOptions{OnInvalidation: ev.hook})
	lookup(t, b.c, testService, testOrg)
	b.c.handle(&redis.Pong{})
	b.c.handle(&redis.Subscription{Kind: "unsubscribe", Channel: InvalidationChannel(prefix)})
	if !held(b, testService, testOrg) || ev.get(InvalidationResubscribed) != 0 {
		t.Fatal("a pong or an unsubscription cleared the tier")
	}
	b.c.handle(&redis.Subscription{Kind: "subscribe", Channel: InvalidationChannel(prefix), Count: 1})
	if held(b, testService, testOrg) || ev.get(InvalidationResubscribed) != 1 {
		t.Fatal("a new confirmation did not clear the tier")
	}
}
