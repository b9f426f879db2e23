package redistopo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterNodeTimeoutMs is cluster-node-timeout: a node silent this long is
// suspected failing. 1 s makes a failover take about 2-3 s; no node fell
// silent that long by mistake with three test binaries and a CPU hog
// sharing 2 cores.
const clusterNodeTimeoutMs = 1000

// clusterSlots are the slot ranges of the three masters, as redis-cli
// --cluster create assigns them.
var clusterSlots = [3][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}

// Cluster is a Redis Cluster of three masters, each with one replica.
// Masters and Replicas are the roles at start: Replicas[i] replicates
// Masters[i], which serves clusterSlots[i] (0-5460, 5461-10922,
// 10923-16383).
type Cluster struct {
	// Masters are the masters at start.
	Masters []*Server
	// Replicas are the replicas at start; Replicas[i] replicates Masters[i].
	Replicas []*Server

	t    testing.TB
	mu   sync.Mutex
	lost map[string]lostMaster // by address: masters KillMaster or KillMasterOf killed
}

// lostMaster is what a killed master served, for WaitPromotion and
// WaitFirstPromoted.
type lostMaster struct {
	slot     int      // a slot it served
	replicas []string // its replicas' addresses
}

// StartCluster starts six cluster nodes and forms the cluster without
// redis-cli: distinct config epochs, slots on the masters, every node
// meeting every other, each replica replicating its master. It returns
// once every node reports cluster_state:ok and sees every replica attached
// to its master, so a failover can start at once.
//
// CLUSTER SLOTS lists a replica only once its replication offset has
// moved, which on an idle cluster is at the master's first replication
// ping (repl-ping-replica-period, 10 s): about 8 s after StartCluster
// returns. StartCluster does not wait for that, so a test that reads from
// replicas through a cluster client must. (A 1 s ping period lists them at
// once but does not make StartCluster any faster, so the default stays.)
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	root := t.TempDir()
	nodes := startGroup(t, root, groupSpec{
		n: 6, nports: 2,
		name: func(i int) string {
			if i < 3 {
				return fmt.Sprintf("master-%d", i)
			}
			return fmt.Sprintf("replica-%d", i-3)
		},
		args: func(i int, dir string, ports [][]int) ([]string, error) {
			return append(dataArgs(dir, ports[i][0]),
				"--cluster-enabled", "yes",
				"--cluster-port", strconv.Itoa(ports[i][1]),
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeoutMs),
				// Any replica may be promoted, however long its link has
				// been down: a test kills masters at will.
				"--cluster-replica-validity-factor", "0",
				// Replicas stay with the master the test gave them.
				"--cluster-allow-replica-migration", "no",
			), nil
		},
	})
	c := &Cluster{Masters: nodes[:3], Replicas: nodes[3:], t: t, lost: map[string]lostMaster{}}
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	if err := c.form(ctx); err != nil {
		t.Fatalf("redistopo: forming the cluster: %v", err)
	}
	return c
}

// nodes returns the masters and replicas at start.
func (c *Cluster) nodes() []*Server { return slices.Concat(c.Masters, c.Replicas) }

// form joins the six started nodes into a cluster.
func (c *Cluster) form(ctx context.Context) error {
	nodes := c.nodes()
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		// Distinct epochs from the start, as redis-cli gives them: equal
		// ones are resolved by the nodes, but only over a few seconds.
		if err := n.Client().Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			return fmt.Errorf("%s: CLUSTER SET-CONFIG-EPOCH: %w", n, err)
		}
		id, err := n.Client().ClusterMyID(ctx).Result()
		if err != nil {
			return fmt.Errorf("%s: CLUSTER MYID: %w", n, err)
		}
		ids[i] = id
	}
	for i, m := range c.Masters {
		if err := m.Client().ClusterAddSlotsRange(ctx, clusterSlots[i][0], clusterSlots[i][1]).Err(); err != nil {
			return fmt.Errorf("%s: CLUSTER ADDSLOTSRANGE: %w", m, err)
		}
	}
	// Every pair meets directly, so no node waits for gossip to learn of
	// the others.
	for i, n := range nodes {
		for _, o := range nodes[:i] {
			if err := n.Client().Do(ctx, "CLUSTER", "MEET", "127.0.0.1", o.ports[0], o.ports[1]).Err(); err != nil {
				return fmt.Errorf("%s: CLUSTER MEET %s: %w", n, o, err)
			}
		}
	}
	if err := poll(ctx, "every node knowing every other", func(ctx context.Context) error {
		return c.checkNodes(ctx, nil)
	}); err != nil {
		return err
	}
	for i, r := range c.Replicas {
		if err := r.Client().ClusterReplicate(ctx, ids[i]).Err(); err != nil {
			return fmt.Errorf("%s: CLUSTER REPLICATE %s: %w", r, ids[i], err)
		}
	}
	return poll(ctx, "cluster_state:ok with every replica attached", func(ctx context.Context) error {
		if err := c.checkNodes(ctx, ids[:3]); err != nil {
			return err
		}
		for _, n := range nodes {
			info, err := n.Client().ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if v := infoField(info, "cluster_state"); v != "ok" {
				return fmt.Errorf("%s: cluster_state:%s", n, v)
			}
		}
		for i, m := range c.Masters {
			if err := checkReplicas(ctx, m, c.Replicas[i:i+1]); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkNodes checks that every node lists the six nodes, connected and
// healthy. With masterIDs, it also checks that every node sees Masters[i]
// as a master with slots and Replicas[i] as a replica of masterIDs[i].
func (c *Cluster) checkNodes(ctx context.Context, masterIDs []string) error {
	nodes := c.nodes()
	for _, n := range nodes {
		text, err := n.Client().ClusterNodes(ctx).Result()
		if err != nil {
			return err
		}
		view := parseClusterNodes(text)
		if len(view) != len(nodes) {
			return fmt.Errorf("%s knows %d nodes", n, len(view))
		}
		for _, o := range nodes {
			e, ok := view[o.Addr]
			if !ok {
				return fmt.Errorf("%s does not know %s", n, o)
			}
			if !e.connected || e.hasFlag("handshake", "noaddr", "fail", "fail?") {
				return fmt.Errorf("%s sees %s: %s", n, o, e.line)
			}
		}
		for i := range masterIDs {
			m, r := view[c.Masters[i].Addr], view[c.Replicas[i].Addr]
			if !m.hasFlag("master") || len(m.slots) == 0 {
				return fmt.Errorf("%s sees %s: %s", n, c.Masters[i], m.line)
			}
			if !r.hasFlag("slave") || r.master != masterIDs[i] {
				return fmt.Errorf("%s sees %s: %s", n, c.Replicas[i], r.line)
			}
		}
	}
	return nil
}

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	line      string
	id        string
	flags     []string
	master    string // the master's id, or "-"
	connected bool
	slots     [][2]int
}

// hasFlag reports whether the node has any of flags.
func (n clusterNode) hasFlag(flags ...string) bool {
	for _, f := range flags {
		if slices.Contains(n.flags, f) {
			return true
		}
	}
	return false
}

// parseClusterNodes parses CLUSTER NODES into entries by "ip:port".
func parseClusterNodes(text string) map[string]clusterNode {
	view := map[string]clusterNode{}
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@") // ip:port@cport[,hostname]
		n := clusterNode{
			line: strings.TrimSpace(line), id: f[0], flags: strings.Split(f[2], ","),
			master: f[3], connected: f[7] == "connected",
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") { // a slot being migrated
				continue
			}
			lo, hi, isRange := strings.Cut(s, "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := a, error(nil)
			if isRange {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 == nil && err2 == nil {
				n.slots = append(n.slots, [2]int{a, b})
			}
		}
		view[addr] = n
	}
	return view
}

// Addrs returns the addresses of all six nodes, for a cluster client's
// seed list.
func (c *Cluster) Addrs() []string {
	var addrs []string
	for _, n := range c.nodes() {
		addrs = append(addrs, n.Addr)
	}
	return addrs
}

// Server returns the node at addr, or nil.
func (c *Cluster) Server(addr string) *Server {
	for _, n := range c.nodes() {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// live returns the nodes whose process runs, skip excluded.
func (c *Cluster) live(skip string) []*Server {
	var live []*Server
	for _, n := range c.nodes() {
		if n.Alive() && n.Addr != skip {
			live = append(live, n)
		}
	}
	return live
}

// KillMaster kills Masters[i] with SIGKILL and returns it. It fails the
// test if Masters[i] no longer serves slots (a failover made it a
// replica). It notes the slots the master served and its replicas, for
// WaitPromotion and WaitFirstPromoted.
func (c *Cluster) KillMaster(i int) *Server {
	c.t.Helper()
	victim := c.Masters[i]
	if err := c.killMaster(victim); err != nil {
		c.t.Fatalf("redistopo: KillMaster(%d): %v", i, err)
	}
	return victim
}

// KillMasterOf kills with SIGKILL the master serving key's slot now (see
// MasterOf) and returns it. For a Pub/Sub channel, pass the channel: a
// cluster client subscribes on the master of the channel's slot. Unlike
// KillMaster, the master need not be one of Masters: after a failover it
// may be a former replica. Like KillMaster, it notes what the master
// served, for WaitPromotion and WaitFirstPromoted.
func (c *Cluster) KillMasterOf(key string) *Server {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	addr, err := c.MasterOf(ctx, key)
	if err != nil {
		c.t.Fatalf("redistopo: KillMasterOf(%q): %v", key, err)
	}
	victim := c.Server(addr)
	if victim == nil {
		c.t.Fatalf("redistopo: KillMasterOf(%q): master %s is not a node of this cluster", key, addr)
	}
	if err := c.killMaster(victim); err != nil {
		c.t.Fatalf("redistopo: KillMasterOf(%q): %v", key, err)
	}
	return victim
}

// killMaster notes the slots victim serves and its replicas, then kills
// it.
func (c *Cluster) killMaster(victim *Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	lost, err := c.servedBy(ctx, victim.Addr)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.lost[victim.Addr] = lost
	c.mu.Unlock()
	victim.Kill()
	return nil
}

// servedBy asks a live node other than addr which slots the master at
// addr serves and which replicas it has.
func (c *Cluster) servedBy(ctx context.Context, addr string) (lostMaster, error) {
	live := c.live(addr)
	if len(live) == 0 {
		return lostMaster{}, fmt.Errorf("no live node but %s", addr)
	}
	text, err := live[0].Client().ClusterNodes(ctx).Result()
	if err != nil {
		return lostMaster{}, fmt.Errorf("%s: CLUSTER NODES: %w", live[0], err)
	}
	view := parseClusterNodes(text)
	m, ok := view[addr]
	if !ok || !m.hasFlag("master") || len(m.slots) == 0 {
		return lostMaster{}, fmt.Errorf("%s is not a master serving slots: %q", addr, m.line)
	}
	lost := lostMaster{slot: m.slots[0][0]}
	for a, n := range view {
		if n.master == m.id {
			lost.replicas = append(lost.replicas, a)
		}
	}
	return lost, nil
}

// WaitPromotion polls until a former replica of the dead master at
// deadAddr serves its slots, in the view of every live node (CLUSTER
// SHARDS), answers ROLE as a master, and every live node reports
// cluster_state:ok. It returns the new master's address. For a master not
// killed with KillMaster or KillMasterOf, call it before the failover
// completes.
func (c *Cluster) WaitPromotion(ctx context.Context, deadAddr string) (newAddr string, err error) {
	lost, err := c.lostMaster(ctx, deadAddr)
	if err != nil {
		return "", fmt.Errorf("redistopo: WaitPromotion: %w", err)
	}
	err = poll(ctx, "promotion of a replica of "+deadAddr, func(ctx context.Context) error {
		newAddr = ""
		for _, n := range c.live(deadAddr) {
			info, err := n.Client().ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			if v := infoField(info, "cluster_state"); v != "ok" {
				return fmt.Errorf("%s: cluster_state:%s", n, v)
			}
			owner, err := slotMaster(ctx, n.Client(), lost.slot)
			if err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			switch {
			case !slices.Contains(lost.replicas, owner):
				return fmt.Errorf("%s: slot %d served by %s, not by one of %v", n, lost.slot, owner, lost.replicas)
			case newAddr != "" && owner != newAddr:
				return fmt.Errorf("nodes disagree on slot %d: %s and %s", lost.slot, newAddr, owner)
			}
			newAddr = owner
		}
		if newAddr == "" {
			return stopPolling{fmt.Errorf("no live node")}
		}
		return checkRole(ctx, c.Server(newAddr), newAddr, "master")
	})
	if err != nil {
		return "", fmt.Errorf("redistopo: %w", err)
	}
	return newAddr, nil
}

// lostMaster returns what the dead master at deadAddr served: as noted
// when KillMaster or KillMasterOf killed it, or else as the live nodes
// still see it.
func (c *Cluster) lostMaster(ctx context.Context, deadAddr string) (lostMaster, error) {
	c.mu.Lock()
	lost, ok := c.lost[deadAddr]
	c.mu.Unlock()
	if ok {
		return lost, nil
	}
	return c.servedBy(ctx, deadAddr)
}

// WaitFirstPromoted polls until a former replica of the dead master at
// deadAddr answers ROLE as a master, and returns its address and the time
// of that answer: the moment of the promotion, as closely as a poll every
// 25 ms tells it. The promoted replica claims the slots as it becomes a
// master, so this is the reference point for "within d of the promotion";
// the other nodes learn of it over the cluster bus a little later, which
// WaitPromotion waits for. For a master not killed with KillMaster or
// KillMasterOf, call it before the failover completes.
func (c *Cluster) WaitFirstPromoted(ctx context.Context, deadAddr string) (newAddr string, at time.Time, err error) {
	lost, err := c.lostMaster(ctx, deadAddr)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("redistopo: WaitFirstPromoted: %w", err)
	}
	err = poll(ctx, "a replica of "+deadAddr+" answering ROLE as a master", func(ctx context.Context) error {
		var errs []error
		for _, addr := range lost.replicas {
			if err := checkRole(ctx, c.Server(addr), addr, "master"); err != nil {
				errs = append(errs, err)
				continue
			}
			newAddr, at = addr, time.Now()
			return nil
		}
		if len(errs) == 0 {
			return stopPolling{fmt.Errorf("%s had no replica", deadAddr)}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("redistopo: %w", err)
	}
	return newAddr, at, nil
}

// slotMaster returns the address of the healthy master serving slot in
// the CLUSTER SHARDS view of the node behind client.
func slotMaster(ctx context.Context, client *redis.Client, slot int) (string, error) {
	shards, err := client.ClusterShards(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("CLUSTER SHARDS: %w", err)
	}
	for _, sh := range shards {
		if !slices.ContainsFunc(sh.Slots, func(r redis.SlotRange) bool {
			return int64(slot) >= r.Start && int64(slot) <= r.End
		}) {
			continue
		}
		for _, n := range sh.Nodes {
			if n.Role == "master" && n.Health == "online" {
				return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10)), nil
			}
		}
		return "", fmt.Errorf("slot %d has no healthy master: %+v", slot, sh.Nodes)
	}
	return "", fmt.Errorf("slot %d is not served", slot)
}

// MasterOf returns the address of the master serving key, as a live node
// sees it (CLUSTER KEYSLOT, CLUSTER SHARDS).
func (c *Cluster) MasterOf(ctx context.Context, key string) (string, error) {
	live := c.live("")
	if len(live) == 0 {
		return "", fmt.Errorf("redistopo: no live cluster node")
	}
	client := live[0].Client()
	slot, err := client.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", fmt.Errorf("redistopo: CLUSTER KEYSLOT: %w", err)
	}
	addr, err := slotMaster(ctx, client, int(slot))
	if err != nil {
		return "", fmt.Errorf("redistopo: %w", err)
	}
	return addr, nil
}
