package integration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/redistopo"
)

// The invalidation subscription follows its channel to the new master of a
// Redis Cluster within 2 s of the promotion, when the master that held the
// channel's slot dies: an invalidation published then, by a client that did
// not see the old topology, reaches it.
func TestInvalidationFailoverCluster(t *testing.T) {
	t.Parallel()
	began := time.Now()
	c := redistopo.StartCluster(t)
	t.Logf("cluster: started in %s", time.Since(began).Round(time.Millisecond))
	testInvalidationFailover(t, failoverTopo{
		kind:       "cluster",
		config:     cache.RedisConfig{Addrs: c.Addrs()},
		killMaster: func(channel string) string { return c.KillMasterOf(channel).Addr },
		// The promotion is when the replica answers ROLE as a master: it
		// claims the slots at once, and the other nodes learn of it within
		// milliseconds.
		waitPromotion: c.WaitFirstPromoted,
	})
}

// The same through Sentinel, when the master dies: within 2 s of a Sentinel
// naming the new master.
func TestInvalidationFailoverSentinel(t *testing.T) {
	t.Parallel()
	began := time.Now()
	s := redistopo.StartSentinel(t)
	t.Logf("sentinel: started in %s", time.Since(began).Round(time.Millisecond))
	testInvalidationFailover(t, failoverTopo{
		kind:       "sentinel",
		config:     cache.RedisConfig{Addrs: s.SentinelAddrs(), MasterName: s.MasterName},
		killMaster: func(string) string { return s.KillMaster().Addr },
		// The promotion is when a majority of the Sentinels name the new
		// master (what clients ask): up to a second after the replica became
		// one. A lone sentinel may name a pick a later epoch overrides.
		waitPromotion: s.WaitFirstNamed,
	})
}

// failoverTopo is a running Redis topology as the failover test sees it.
type failoverTopo struct {
	kind   string            // "cluster" or "sentinel", for messages
	config cache.RedisConfig // the gateway's configuration of it
	// killMaster kills (SIGKILL) the master serving channel and returns its
	// address.
	killMaster func(channel string) string
	// waitPromotion waits for the dead master's replacement and returns its
	// address and when the promotion was first seen.
	waitPromotion func(ctx context.Context, dead string) (string, time.Time, error)
}

// client returns a client of the topology built as the gateway builds one.
func (tp failoverTopo) client(t *testing.T) redis.UniversalClient {
	t.Helper()
	opts, err := tp.config.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewUniversalClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// failoverWithin is how soon after the promotion an invalidation must reach
// the subscriber.
const failoverWithin = 2 * time.Second

func testInvalidationFailover(t *testing.T, topo failoverTopo) {
	const svc = "kjernejournal"
	org := newOrg(t)
	prefix := "hg-test-" + randHex(6) + ":"
	channel := cache.InvalidationChannel(prefix)

	// The subscriber: a membership cache with its subscription running, on a
	// client built as the gateway builds it.
	client := topo.client(t)
	var applied, resubscribed atomic.Int32
	var resubscribedAt atomic.Int64 // UnixNano of the last resubscription
	m := cache.NewCachedMembership(memberSource{}, cache.MembershipCacheOptions{
		Redis:     client,
		KeyPrefix: prefix,
		OnInvalidation: func(event string) {
			switch event {
			case cache.InvalidationApplied:
				applied.Add(1)
			case cache.InvalidationResubscribed:
				resubscribed.Add(1)
				resubscribedAt.Store(time.Now().UnixNano())
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m.Subscribe(ctx)
	if _, err := m.Lookup(ctx, svc, org); err != nil {
		t.Fatal(err)
	}

	// publishUntilApplied publishes through pub, every 100 ms, until the
	// subscriber applied one more invalidation than before, or deadline. A
	// failed publication is retried: the publisher's client may be behind
	// the failover too.
	var failedPublications int
	var lastPublishErr error
	publishUntilApplied := func(pub redis.UniversalClient, deadline time.Time) (time.Time, bool) {
		before := applied.Load()
		failedPublications, lastPublishErr = 0, nil
		for {
			pctx, pcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			_, err := cache.Publish(pctx, pub, prefix, svc, org)
			pcancel()
			if err != nil {
				failedPublications, lastPublishErr = failedPublications+1, err
			}
			for range 10 {
				if applied.Load() > before {
					return time.Now(), true
				}
				if time.Now().After(deadline) {
					return time.Time{}, false
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	// A safety net, not a bound: on an idle machine this takes milliseconds.
	if _, ok := publishUntilApplied(client, time.Now().Add(30*time.Second)); !ok {
		t.Fatalf("the subscriber applied no invalidation before the failover (%d publications failed, the last: %v)",
			failedPublications, lastPublishErr)
	}

	dead := topo.killMaster(channel)
	killed := time.Now()
	wctx, wcancel := context.WithTimeout(context.Background(), 60*time.Second) // a safety net, not a bound
	defer wcancel()
	promoted, at, err := topo.waitPromotion(wctx, dead)
	if err != nil {
		t.Fatalf("%s: %v", topo.kind, err)
	}
	t.Logf("%s: master %s killed; %s promoted %s later", topo.kind, dead, promoted, at.Sub(killed).Round(time.Millisecond))

	pub := topo.client(t) // fresh: its view of the topology is today's
	got, ok := publishUntilApplied(pub, at.Add(failoverWithin))
	if !ok {
		t.Fatalf("%s: no invalidation reached the subscriber within %s of the promotion (resubscribed %d times; %d publications failed, the last: %v)",
			topo.kind, failoverWithin, resubscribed.Load(), failedPublications, lastPublishErr)
	}
	t.Logf("%s: subscription back %s, invalidation applied %s after the promotion (%d publications failed before)", topo.kind,
		time.Unix(0, resubscribedAt.Load()).Sub(at).Round(time.Millisecond), got.Sub(at).Round(time.Millisecond), failedPublications)
	if resubscribed.Load() == 0 {
		t.Errorf("%s: the subscription came back without counting a resubscription (the in-process tier must be cleared after a gap)", topo.kind)
	}
}

// memberSource answers that every organization is a member.
type memberSource struct{}

func (memberSource) Lookup(_ context.Context, service, org string) (authz.Answer, error) {
	return authz.Answer{FetchedAt: time.Now(), Record: &authz.Authorization{
		Organization: org, Service: service, Member: true, Status: "active",
	}}, nil
}
