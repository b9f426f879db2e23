package cache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
)

// TestRedisReplayClusterQuietReplicaAfterFailover: a replica that sent
// nothing during a Cluster failover, and had already talked to the replica
// that was promoted (slot-map reloads reach replicas too), does not trust the
// promoted master: its batches go to the master of their own shard only, so
// the key's new owner is verified first, and it is another server than the
// one the shard's marker was written on. A record the new master lacks (a
// write lost to asynchronous replication, made here with DEL, the marker
// having been replicated long before) is not a fresh proof.
func TestRedisReplayClusterQuietReplicaAfterFailover(t *testing.T) {
	const skew = 500 * time.Millisecond
	cs := newClusterStore(t, "hg-quiet:", skew)
	cl, cc, ids, s := cs.cl, cs.cc, cs.ids, cs.s
	dead := cl.Masters[0].Addr
	key := cs.keysOf(t, dead, "jkt:a", 1, true)[0]
	// The client has talked to the replicas (in production: the periodic
	// CLUSTER SLOTS reloads pick random nodes, replicas included).
	if err := cc.ForEachSlave(t.Context(), func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	t.Logf("idEpoch after touching replicas: %d", ids.Epoch())
	for range 8 {
		cc.ReloadState(t.Context())
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("idEpoch after reloads: %d", ids.Epoch())
	iat := time.Now().Add(2 * skew) // after the first look's floor (a new cluster has no marker)
	if fresh, err := s.FirstUse(t.Context(), key, iat, ttl); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	cl.KillMaster(0)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	newAddr, err := cl.WaitPromotion(ctx, dead)
	if err != nil {
		t.Fatal(err)
	}
	// The promoted replica lacks the last write (async replication loss);
	// the marker, written long before, was replicated.
	nm := cl.Server(newAddr).Client()
	t.Logf("marker on new master: %v", nm.Keys(t.Context(), "hg-quiet:v1:epoch*").Val())
	nm.Del(t.Context(), "hg-quiet:"+replaySpace+key)
	// Until the store follows the slot map to the new master its calls fail;
	// then the loss is declared. Never is the proof fresh.
	deadline := time.Now().Add(10 * time.Second)
	for {
		fresh, err := s.FirstUse(t.Context(), key, iat, ttl)
		if fresh {
			t.Fatalf("a proof accepted before the failover was accepted again after it")
		}
		if errors.Is(err, authz.ErrStoreRecovering) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store did not follow the promotion: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("losses declared: %v", cs.lossList())
}
