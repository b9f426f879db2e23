package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/redistopo"
)

// TestRedisReplayClusterDeadShard: with one of three masters dead, the keys
// the other masters own are answered as before (their shards have their own
// queue and breaker), the dead shard's keys fail, and after the promotion of
// its replica the store follows the slot map to it, declares the loss of
// what the dead master may not have replicated, and accepts proofs issued
// after that.
func TestRedisReplayClusterDeadShard(t *testing.T) {
	const skew = 500 * time.Millisecond
	cs := newClusterStore(t, "hg-cluster:", skew)
	cl, s := cs.cl, cs.s

	// Keys on every master, each used once while all are alive.
	dead := cl.Masters[0].Addr
	byOwner := map[bool][]string{true: cs.keysOf(t, dead, "jkt:k", 5, true), false: cs.keysOf(t, dead, "jkt:k", 20, false)}
	// A new cluster holds no marker: its first look refuses proofs issued
	// before now + skew. These are issued after that, and before the kill.
	before := time.Now().Add(2 * skew)
	for _, k := range append(byOwner[true][:5], byOwner[false][:10]...) {
		if fresh, err := s.FirstUse(t.Context(), k, before, ttl); !fresh || err != nil {
			t.Fatalf("%s with every master alive: %v %v", k, fresh, err)
		}
	}

	cl.KillMaster(0)
	// The live shards answer: replays are replays, new proofs are fresh.
	for i, k := range byOwner[false][:10] {
		if fresh, err := s.FirstUse(t.Context(), k, before, ttl); fresh || err != nil {
			t.Errorf("a replay on a live shard with another master dead: %v %v", fresh, err)
		}
		nk := byOwner[false][10+i] // never used, also on a live shard
		if fresh, err := s.FirstUse(t.Context(), nk, before, ttl); !fresh || err != nil {
			t.Errorf("a new proof on a live shard with another master dead: %v %v", fresh, err)
		}
	}
	// The dead shard's keys fail (breaker or connection), and never as fresh.
	for _, k := range byOwner[true][:5] {
		fresh, err := s.FirstUse(t.Context(), k, before, ttl)
		var sf *StoreFailure
		if fresh || !errors.As(err, &sf) {
			t.Errorf("a key of the dead master: FirstUse = %v, %v; want a StoreFailure", fresh, err)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if _, err := cl.WaitPromotion(ctx, dead); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	// Proofs issued before the promotion on the dead master's slots are
	// refused (the new master may lack the last writes); the store follows
	// the new slot map without go-redis's 60 s periodic reload.
	k := byOwner[true][0]
	var last error
	for time.Since(promoted) < 10*time.Second {
		fresh, err := s.FirstUse(t.Context(), k, before, ttl)
		if fresh {
			t.Fatalf("a proof issued before the failover was accepted again after it")
		}
		if last = err; errors.Is(err, authz.ErrStoreRecovering) || err == nil {
			break // the loss was declared, or the key was replicated: a replay
		}
		time.Sleep(50 * time.Millisecond)
	}
	if last != nil && !errors.Is(last, authz.ErrStoreRecovering) {
		t.Fatalf("the store did not follow the promotion: %v", last)
	}
	// A proof issued after the loss floor is accepted on the promoted shard.
	for i := 0; ; i++ {
		fresh, err := s.FirstUse(t.Context(), fmt.Sprintf("%s-after%d", k, i), time.Now(), ttl)
		if fresh && err == nil {
			break
		}
		if time.Since(promoted) > 10*time.Second {
			t.Fatalf("no proof accepted on the promoted shard: %v %v", fresh, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("losses declared: %v", cs.lossList())
}

// clusterStore is a RedisReplay on a new 3+3 Cluster, built as the gateway
// builds one, recording the losses it declares.
type clusterStore struct {
	cl  *redistopo.Cluster
	cc  *redis.ClusterClient
	ids *ServerIdentities
	s   *RedisReplay

	mu     sync.Mutex
	losses []string
}

func newClusterStore(t *testing.T, prefix string, skew time.Duration) *clusterStore {
	t.Helper()
	cs := &clusterStore{cl: redistopo.StartCluster(t)}
	opts, err := RedisConfig{Addrs: cs.cl.Addrs()}.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	client, ids := NewRedisClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	cs.cc, cs.ids = client.(*redis.ClusterClient), ids
	cs.s = NewRedisReplay(client, RedisReplayOptions{Prefix: prefix, Identities: ids, FutureSkew: skew,
		OnLoss: func(why string, _ time.Time) {
			cs.mu.Lock()
			cs.losses = append(cs.losses, why)
			cs.mu.Unlock()
		}})
	return cs
}

// keysOf returns n replay keys (base followed by a number) whose records
// the master at addr owns (owned) or does not own (!owned).
func (cs *clusterStore) keysOf(t *testing.T, addr, base string, n int, owned bool) []string {
	t.Helper()
	var keys []string
	for i := 0; len(keys) < n; i++ {
		key := fmt.Sprintf("%s%d", base, i)
		node, err := cs.cc.MasterForKey(t.Context(), cs.s.prefix+replaySpace+key)
		if err != nil {
			t.Fatal(err)
		}
		if (node.Options().Addr == addr) == owned {
			keys = append(keys, key)
		}
	}
	return keys
}

// lossList returns the losses declared so far.
func (cs *clusterStore) lossList() []string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return append([]string(nil), cs.losses...)
}

// TestRedisReplayClusterNewNodeClient: go-redis closes the client of a node
// that left the slot map, and makes a new one if that address is a master
// again. A shard left holding the closed client gives way to the new one
// (verified again) instead of failing its keys until a restart.
func TestRedisReplayClusterNewNodeClient(t *testing.T) {
	const skew = 500 * time.Millisecond
	cs := newClusterStore(t, "hg-cluster-client:", skew)
	s := cs.s
	addr := cs.cl.Masters[0].Addr
	keys := cs.keysOf(t, addr, "jkt:c", 2, true)
	iat := time.Now().Add(10 * time.Second) // after the first look's floor (now + skew), however slow the machine
	if fresh, err := s.FirstUse(t.Context(), keys[0], iat, ttl); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	// What go-redis's node collection leaves a shard with: a closed client.
	s.mu.Lock()
	sh := s.shards[addr]
	s.mu.Unlock()
	closed := redis.NewClient(&redis.Options{Addr: addr})
	_ = closed.Close()
	sh.client = closed
	if fresh, err := s.FirstUse(t.Context(), keys[1], iat, ttl); !fresh || err != nil {
		t.Fatalf("a new proof on the shard whose client was closed: %v %v", fresh, err)
	}
	if fresh, err := s.FirstUse(t.Context(), keys[0], iat, ttl); fresh || err != nil {
		t.Fatalf("a replay on that shard: %v %v", fresh, err)
	}
}
