package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// The invalidation subscription follows its channel to the new master of a
// Redis Cluster within 2 s of the promotion, when the master that held the
// channel's slot dies: an invalidation published then, by a client that did
// not see the old topology, reaches it.
func TestInvalidationFailoverCluster(t *testing.T) {
	t.Parallel()
	topo := startLocalCluster(t)
	testInvalidationFailover(t, topo)
}

// The same through Sentinel, when the master dies: within 2 s of a Sentinel
// naming the new master.
func TestInvalidationFailoverSentinel(t *testing.T) {
	t.Parallel()
	topo := startLocalSentinel(t)
	testInvalidationFailover(t, topo)
}

// failoverWithin is how soon after the promotion an invalidation must reach
// the subscriber.
const failoverWithin = 2 * time.Second

func testInvalidationFailover(t *testing.T, topo *localTopo) {
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
	if _, ok := publishUntilApplied(client, time.Now().Add(10*time.Second)); !ok {
		t.Fatalf("the subscriber applied no invalidation before the failover (%d publications failed, the last: %v)",
			failedPublications, lastPublishErr)
	}

	dead := topo.killMasterFor(t, channel)
	killed := time.Now()
	promoted, at := topo.waitPromotion(t, dead, 30*time.Second)
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

// ---------------------------------------------------------------------------
// A minimal stand-in for a Redis topology harness: redis-server processes on
// free loopback ports, without persistence, formed into a Cluster (3 masters,
// 3 replicas) or a Sentinel set (1 master, 2 replicas, 3 sentinels), and a
// master to kill. Written to be replaced by a shared harness with the same
// shape (start, kill the master, wait for the promotion).

type localTopo struct {
	kind       string // "cluster" or "sentinel"
	dir        string
	nodes      map[string]*localRedis // by address
	sentinels  []string
	masterName string
	replicaOf  map[string][]string // master address -> its replicas
}

type localRedis struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
}

const localMasterName = "helsegate"

func needRedisServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed: the failover tests start their own topologies")
	}
	return bin
}

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRedisProcess starts redis-server with args after the common ones
// (loopback, no persistence, its own directory) and waits until it answers.
func (tp *localTopo) startRedisProcess(t *testing.T, port int, args ...string) *localRedis {
	t.Helper()
	bin := needRedisServer(t)
	dir := filepath.Join(tp.dir, strconv.Itoa(port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	base := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"),
		// A replica syncs at once, not after 5 s; and a master pings its
		// replicas every second, not every 10: until a replica's offset
		// moves, CLUSTER SLOTS does not list it.
		"--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"}
	if len(args) > 0 && strings.HasSuffix(args[0], ".conf") {
		base = append([]string{args[0]}, base...) // a config file comes first
		args = args[1:]
	}
	cmd := exec.Command(bin, append(base, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &localRedis{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.done) }()
	t.Cleanup(func() { r.kill() })
	c := redis.NewClient(&redis.Options{Addr: r.addr, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	eventuallyTrue(t, 10*time.Second, "redis-server at "+r.addr+" answers", func() bool {
		return c.Ping(context.Background()).Err() == nil
	})
	return r
}

func (r *localRedis) kill() {
	if r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// eventuallyTrue polls cond every 20 ms until it holds, or fails the test.
func eventuallyTrue(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startLocalCluster starts six nodes and forms a Cluster of three masters,
// each with one replica, with a node timeout of one second.
func startLocalCluster(t *testing.T) *localTopo {
	t.Helper()
	needRedisServer(t)
	start := time.Now()
	tp := &localTopo{kind: "cluster", dir: t.TempDir(), nodes: map[string]*localRedis{}, replicaOf: map[string][]string{}}
	ctx := context.Background()
	type node struct {
		r     *localRedis
		c     *redis.Client
		bus   int
		port  int
		id    string
		owner int // for a replica: the index of its master
	}
	var ns []*node
	for range 6 {
		port, bus := freePort(t), freePort(t)
		r := tp.startRedisProcess(t, port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000", "--cluster-port", strconv.Itoa(bus))
		c := redis.NewClient(&redis.Options{Addr: r.addr})
		t.Cleanup(func() { _ = c.Close() })
		id, err := c.Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		tp.nodes[r.addr] = r
		ns = append(ns, &node{r: r, c: c, bus: bus, port: port, id: id})
	}
	ranges := [][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}
	for i, rg := range ranges {
		if err := ns[i].c.Do(ctx, "cluster", "addslotsrange", rg[0], rg[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range ns[1:] {
		if err := ns[0].c.Do(ctx, "cluster", "meet", "127.0.0.1", n.port, n.bus).Err(); err != nil {
			t.Fatal(err)
		}
	}
	eventuallyTrue(t, 15*time.Second, "every node knows the five others", func() bool {
		for _, n := range ns {
			out, err := n.c.Do(ctx, "cluster", "nodes").Text()
			if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 5 || strings.Contains(out, "handshake") {
				return false
			}
		}
		return true
	})
	for i := 3; i < 6; i++ {
		n := ns[i]
		n.owner = i - 3
		eventuallyTrue(t, 10*time.Second, "CLUSTER REPLICATE", func() bool {
			return n.c.Do(ctx, "cluster", "replicate", ns[n.owner].id).Err() == nil
		})
		tp.replicaOf[ns[n.owner].r.addr] = append(tp.replicaOf[ns[n.owner].r.addr], n.r.addr)
	}
	eventuallyTrue(t, 20*time.Second, "the cluster is ok, its replicas in sync", func() bool {
		for _, n := range ns {
			info, err := n.c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
		}
		for _, n := range ns[3:] {
			info, err := n.c.Info(ctx, "replication").Result()
			if err != nil || !strings.Contains(info, "master_link_status:up") {
				return false
			}
		}
		slots, err := ns[0].c.ClusterSlots(ctx).Result()
		if err != nil || len(slots) != 3 {
			return false
		}
		for _, s := range slots {
			if len(s.Nodes) != 2 {
				return false
			}
		}
		return true
	})
	t.Logf("cluster of six nodes formed in %s", time.Since(start).Round(time.Millisecond))
	return tp
}

// startLocalSentinel starts a master, two replicas and three Sentinels
// watching it, which declare it down after a second.
func startLocalSentinel(t *testing.T) *localTopo {
	t.Helper()
	needRedisServer(t)
	start := time.Now()
	tp := &localTopo{kind: "sentinel", dir: t.TempDir(), nodes: map[string]*localRedis{}, replicaOf: map[string][]string{},
		masterName: localMasterName}
	ctx := context.Background()
	mport := freePort(t)
	master := tp.startRedisProcess(t, mport)
	tp.nodes[master.addr] = master
	for range 2 {
		r := tp.startRedisProcess(t, freePort(t), "--replicaof", "127.0.0.1", strconv.Itoa(mport))
		tp.nodes[r.addr] = r
		tp.replicaOf[master.addr] = append(tp.replicaOf[master.addr], r.addr)
	}
	for range 3 {
		port := freePort(t)
		conf := filepath.Join(tp.dir, fmt.Sprintf("sentinel-%d.conf", port))
		body := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 10000\n"+
			"sentinel parallel-syncs %[1]s 2\n", localMasterName, mport)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		s := tp.startRedisProcess(t, port, conf, "--sentinel")
		tp.sentinels = append(tp.sentinels, s.addr)
	}
	eventuallyTrue(t, 20*time.Second, "every Sentinel knows the replicas and the other Sentinels", func() bool {
		for _, addr := range tp.sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: addr})
			reps, err1 := sc.Replicas(ctx, localMasterName).Result()
			sens, err2 := sc.Sentinels(ctx, localMasterName).Result()
			_ = sc.Close()
			if err1 != nil || err2 != nil || len(reps) != 2 || len(sens) != 2 {
				return false
			}
		}
		return true
	})
	t.Logf("sentinel set formed in %s", time.Since(start).Round(time.Millisecond))
	return tp
}

// config returns the gateway's Redis configuration of the topology.
func (tp *localTopo) config() cache.RedisConfig {
	if tp.kind == "sentinel" {
		return cache.RedisConfig{Addrs: tp.sentinels, MasterName: tp.masterName}
	}
	var addrs []string
	for a := range tp.nodes {
		addrs = append(addrs, a)
	}
	return cache.RedisConfig{Addrs: addrs}
}

// client returns a client of the topology built as the gateway builds one.
func (tp *localTopo) client(t *testing.T) redis.UniversalClient {
	t.Helper()
	opts, err := tp.config().UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewUniversalClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// masterFor returns the address of the master that serves key: the master
// of the Sentinel set, or the Cluster master owning the key's slot.
func (tp *localTopo) masterFor(t *testing.T, key string) string {
	t.Helper()
	ctx := context.Background()
	if tp.kind == "sentinel" {
		sc := redis.NewSentinelClient(&redis.Options{Addr: tp.sentinels[0]})
		defer sc.Close()
		a, err := sc.GetMasterAddrByName(ctx, tp.masterName).Result()
		if err != nil {
			t.Fatal(err)
		}
		return net.JoinHostPort(a[0], a[1])
	}
	for addr := range tp.nodes {
		c := redis.NewClient(&redis.Options{Addr: addr})
		slot, err := c.ClusterKeySlot(ctx, key).Result()
		var slots []redis.ClusterSlot
		if err == nil {
			slots, err = c.ClusterSlots(ctx).Result()
		}
		_ = c.Close()
		if err != nil {
			continue
		}
		for _, s := range slots {
			if int64(s.Start) <= slot && slot <= int64(s.End) {
				return s.Nodes[0].Addr
			}
		}
	}
	t.Fatalf("no node says which master serves %q", key)
	return ""
}

// killMasterFor kills the master serving key (SIGKILL: no goodbye to its
// clients or its peers) and returns its address.
func (tp *localTopo) killMasterFor(t *testing.T, key string) string {
	t.Helper()
	addr := tp.masterFor(t, key)
	r, ok := tp.nodes[addr]
	if !ok {
		t.Fatalf("master %s is not one of ours", addr)
	}
	r.kill()
	return addr
}

// waitPromotion polls, every 20 ms, until one of the dead master's replicas
// is the master where clients look for it, and returns it and when that was
// seen. For a Cluster that is when the replica says it is a master (ROLE): it
// claims the slots at once and every node learns it within milliseconds. For
// Sentinel it is when a Sentinel names it as the master (what clients ask),
// which comes up to a second after ROLE says master (the Sentinels check the
// promoted replica once a second): that lag is logged.
func (tp *localTopo) waitPromotion(t *testing.T, dead string, within time.Duration) (string, time.Time) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(within)
	var role time.Time // when a replica first said it is a master
	for time.Now().Before(deadline) {
		for _, rep := range tp.replicaOf[dead] {
			if !role.IsZero() {
				break
			}
			c := redis.NewClient(&redis.Options{Addr: rep, DialTimeout: 200 * time.Millisecond})
			r, err := c.Do(ctx, "role").Slice()
			_ = c.Close()
			if err == nil && len(r) > 0 && r[0] == "master" {
				role = time.Now()
				if tp.kind == "cluster" {
					return rep, role
				}
			}
		}
		if tp.kind == "sentinel" {
			for _, s := range tp.sentinels {
				sc := redis.NewSentinelClient(&redis.Options{Addr: s, DialTimeout: 200 * time.Millisecond})
				a, err := sc.GetMasterAddrByName(ctx, tp.masterName).Result()
				_ = sc.Close()
				if err == nil && net.JoinHostPort(a[0], a[1]) != dead {
					if !role.IsZero() {
						t.Logf("sentinel: a Sentinel named the new master %s after it said ROLE master", time.Since(role).Round(time.Millisecond))
					}
					return net.JoinHostPort(a[0], a[1]), time.Now()
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no replica of %s was promoted within %s", tp.kind, dead, within)
	return "", time.Time{}
}
