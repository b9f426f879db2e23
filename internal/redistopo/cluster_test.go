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
