package redistopo

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestClusterPromotion: after KillMaster(0), WaitPromotion returns its
// replica, a cluster client writes keys of every slot range again, and
// the old master restarted comes back as a replica.
func TestClusterPromotion(t *testing.T) {
	t.Parallel()
	began := time.Now()
	c := StartCluster(t)
	t.Logf("StartCluster: %v", time.Since(began))
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	keys := keyPerMaster(ctx, t, c)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), DisableIdentity: true})
	t.Cleanup(func() { _ = cc.Close() })
	for _, k := range keys {
		if err := cc.Set(ctx, k, "before", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}

	began = time.Now()
	old := c.KillMaster(0)
	newAddr, err := c.WaitPromotion(ctx, old.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KillMaster to WaitPromotion: %v (new master %s)", time.Since(began), newAddr)
	if newAddr != c.Replicas[0].Addr {
		t.Fatalf("WaitPromotion: %s, want the replica %s", newAddr, c.Replicas[0].Addr)
	}
	if addr, err := c.MasterOf(ctx, keys[0]); err != nil || addr != newAddr {
		t.Fatalf("MasterOf(%s): %s, %v; want %s", keys[0], addr, err, newAddr)
	}

	began = time.Now()
	for _, k := range keys {
		retry(ctx, t, "SET "+k+" through the cluster client", func(ctx context.Context) error {
			err := cc.Set(ctx, k, "after", 0).Err()
			if err != nil {
				cc.ReloadState(ctx)
			}
			return err
		})
	}
	t.Logf("cluster client writing every range again: %v after WaitPromotion", time.Since(began))

	began = time.Now()
	old.Restart()
	retry(ctx, t, "restarted old master as a replica", func(ctx context.Context) error {
		return checkRole(ctx, old, old.Addr, "slave")
	})
	t.Logf("old master restarted and a replica: %v", time.Since(began))
}

// keyPerMaster returns a key in each master's slot range, in the order of
// c.Masters, checking that MasterOf agrees.
func keyPerMaster(ctx context.Context, t *testing.T, c *Cluster) []string {
	t.Helper()
	keys := make([]string, len(c.Masters))
	found := 0
	for n := 0; found < len(keys); n++ {
		k := fmt.Sprintf("key-%d", n)
		slot, err := c.Masters[0].Client().ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT: %v", err)
		}
		for i, r := range clusterSlots {
			if int(slot) >= r[0] && int(slot) <= r[1] && keys[i] == "" {
				keys[i] = k
				found++
			}
		}
	}
	for i, k := range keys {
		if addr, err := c.MasterOf(ctx, k); err != nil || addr != c.Masters[i].Addr {
			t.Fatalf("MasterOf(%s): %s, %v; want %s", k, addr, err, c.Masters[i].Addr)
		}
	}
	return keys
}

// TestClusterKillMasterOf: KillMasterOf kills the master of a key's slot,
// whichever of Masters it is, and after a failover the former replica
// that now serves it; WaitFirstPromoted returns the replica promoted, at a
// time after the kill and before WaitPromotion sees the whole cluster
// agree.
func TestClusterKillMasterOf(t *testing.T) {
	t.Parallel()
	c := StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	key := keyPerMaster(ctx, t, c)[1] // not Masters[0], which KillMaster tests use

	// failover kills the master of key, which must be victim, and checks
	// that want is promoted in its place.
	failover := func(victim, want *Server) {
		t.Helper()
		old := c.KillMasterOf(key)
		killed := time.Now()
		if old != victim {
			t.Fatalf("KillMasterOf(%s) killed %s, want %s", key, old, victim)
		}
		if old.Alive() {
			t.Fatalf("KillMasterOf(%s): %s still runs", key, old)
		}
		first, at, err := c.WaitFirstPromoted(ctx, old.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if first != want.Addr || at.Before(killed) {
			t.Fatalf("WaitFirstPromoted: %s at %v after the kill; want %s, after the kill", first, at.Sub(killed), want)
		}
		agreed, err := c.WaitPromotion(ctx, old.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if agreed != first {
			t.Fatalf("WaitPromotion: %s, WaitFirstPromoted: %s", agreed, first)
		}
		t.Logf("%s killed; %s answered ROLE master %v later, the cluster agreed %v after that",
			old, want, at.Sub(killed).Round(time.Millisecond), time.Since(at).Round(time.Millisecond))
		if addr, err := c.MasterOf(ctx, key); err != nil || addr != want.Addr {
			t.Fatalf("MasterOf(%s): %s, %v; want %s", key, addr, err, want.Addr)
		}
	}
	failover(c.Masters[1], c.Replicas[1])

	// The old master comes back as a replica of the new one; once every
	// node sees it so, the promoted replica is the master KillMasterOf
	// kills.
	c.Masters[1].Restart()
	retry(ctx, t, "the restarted master replicating the promoted one", func(ctx context.Context) error {
		if err := checkReplicas(ctx, c.Replicas[1], c.Masters[1:2]); err != nil {
			return err
		}
		for _, n := range c.live("") {
			text, err := n.Client().ClusterNodes(ctx).Result()
			if err != nil {
				return err
			}
			view := parseClusterNodes(text)
			if r, m := view[c.Masters[1].Addr], view[c.Replicas[1].Addr]; r.master != m.id || !m.hasFlag("master") {
				return fmt.Errorf("%s sees %s as %q", n, c.Masters[1], r.line)
			}
		}
		return nil
	})
	failover(c.Replicas[1], c.Masters[1])
}
