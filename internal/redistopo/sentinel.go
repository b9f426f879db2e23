package redistopo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// SentinelMasterName is the name the sentinels monitor the master by.
	SentinelMasterName = "redistopo"

	// sentinelDownAfterMs is how long the master may not answer before a
	// sentinel thinks it down: a failover starts about this long after a
	// kill and ends about 2.5 s later. 1 s is the smallest value at which
	// sentinels still PING once a second; lower would make them PING
	// faster and risk a failover of a master that a loaded machine is
	// merely slow to schedule.
	sentinelDownAfterMs = 1000

	// sentinelFailoverTimeoutMs bounds the steps of a failover (a promoted
	// replica must report itself master within it, about 1 s here) and,
	// doubled, is the wait before a retry after an election that chose no
	// leader. 5 s leaves a loaded machine room for the promotion, and the
	// rare retry still ends within a test's deadline.
	sentinelFailoverTimeoutMs = 5000
)

// Sentinel is a Sentinel-monitored group: one master, two replicas of it
// and three sentinels with a quorum of two. Master and Replicas are the
// roles at start; after a failover, CurrentMaster tells the master.
type Sentinel struct {
	// MasterName is the name the sentinels know the master by.
	MasterName string
	// Master is the master at start.
	Master *Server
	// Replicas are the replicas at start.
	Replicas []*Server
	// Sentinels are the three sentinels.
	Sentinels []*Server

	t       testing.TB
	clients []*redis.SentinelClient // clients[i] talks to Sentinels[i]
}

// StartSentinel starts a master, two replicas and three sentinels, and
// waits until the replicas are in sync and every sentinel sees the master,
// both replicas and the two other sentinels, so a failover can start at
// once.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	root := t.TempDir()
	data := startGroup(t, root, groupSpec{
		n: 3, nports: 1,
		name: func(i int) string {
			if i == 0 {
				return "master"
			}
			return fmt.Sprintf("replica-%d", i-1)
		},
		args: func(i int, dir string, ports [][]int) ([]string, error) {
			args := dataArgs(dir, ports[i][0])
			if i > 0 {
				args = append(args, "--replicaof", "127.0.0.1", strconv.Itoa(ports[0][0]))
			}
			return args, nil
		},
	})
	s := &Sentinel{MasterName: SentinelMasterName, Master: data[0], Replicas: data[1:], t: t}
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	if err := waitReplicas(ctx, s.Master, s.Replicas); err != nil {
		t.Fatalf("redistopo: %v", err)
	}

	ids := make([]string, 3)
	for i := range ids {
		ids[i] = newRunID()
	}
	s.Sentinels = startGroup(t, root, groupSpec{
		n: 3, nports: 1,
		name: func(i int) string { return fmt.Sprintf("sentinel-%d", i) },
		args: func(i int, dir string, ports [][]int) ([]string, error) {
			conf := filepath.Join(dir, "sentinel.conf")
			text := s.sentinelConf(dir, i, ports, ids)
			if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
				return nil, err
			}
			return []string{conf, "--sentinel"}, nil
		},
	})
	for _, sen := range s.Sentinels {
		c := redis.NewSentinelClient(adminOptions(sen.Addr))
		t.Cleanup(func() { _ = c.Close() })
		s.clients = append(s.clients, c)
	}
	if err := s.waitSentinels(ctx); err != nil {
		t.Fatalf("redistopo: %v", err)
	}
	return s
}

// newRunID returns a random 40-hex-digit Redis run id.
func newRunID() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// sentinelConf is the configuration of sentinel i. It names the replicas
// and the other sentinels (with the ids they are given), as a sentinel's
// own rewritten configuration would: they need not be discovered first,
// which takes seconds (hello messages every 2 s). Sentinel rewrites the
// file, so it must be writable.
func (s *Sentinel) sentinelConf(dir string, i int, ports [][]int, ids []string) string {
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	line("port %d", ports[i][0])
	line("bind 127.0.0.1")
	line("dir %q", dir)
	line("logfile %q", filepath.Join(dir, "redis.log"))
	line("sentinel myid %s", ids[i])
	line("sentinel monitor %s 127.0.0.1 %s 2", s.MasterName, portOf(s.Master.Addr))
	line("sentinel down-after-milliseconds %s %d", s.MasterName, sentinelDownAfterMs)
	line("sentinel failover-timeout %s %d", s.MasterName, sentinelFailoverTimeoutMs)
	// Both replicas resync with the new master at once: nothing reads
	// from replicas here, so there is no reason to stagger them.
	line("sentinel parallel-syncs %s 2", s.MasterName)
	for _, r := range s.Replicas {
		line("sentinel known-replica %s 127.0.0.1 %s", s.MasterName, portOf(r.Addr))
	}
	for j := range ports {
		if j != i {
			line("sentinel known-sentinel %s 127.0.0.1 %d %s", s.MasterName, ports[j][0], ids[j])
		}
	}
	return b.String()
}

// portOf returns the port of a "host:port" address.
func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// waitReplicas polls until master reports every replica online and every
// replica reports its link to master up.
func waitReplicas(ctx context.Context, master *Server, replicas []*Server) error {
	return poll(ctx, "replicas in sync with "+master.String(), func(ctx context.Context) error {
		return checkReplicas(ctx, master, replicas)
	})
}

// checkReplicas checks that master reports every replica online and every
// replica its link up.
func checkReplicas(ctx context.Context, master *Server, replicas []*Server) error {
	info, err := master.Client().Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if n := infoField(info, "connected_slaves"); n != strconv.Itoa(len(replicas)) {
		return fmt.Errorf("%s: connected_slaves:%s", master, n)
	}
	for i := range replicas {
		if v := infoField(info, fmt.Sprintf("slave%d", i)); !strings.Contains(v, "state=online") {
			return fmt.Errorf("%s: slave%d:%s", master, i, v)
		}
	}
	for _, r := range replicas {
		info, err := r.Client().Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if v := infoField(info, "master_link_status"); v != "up" {
			return fmt.Errorf("%s: master_link_status:%s", r, v)
		}
	}
	return nil
}

// waitSentinels polls until every sentinel sees the master healthy, both
// replicas with their link up and both other sentinels, each having
// answered its last PING. Sentinels started together take about a second
// for this: a sentinel retries a failed connection once a second, and the
// first connections fail while the others are still starting.
func (s *Sentinel) waitSentinels(ctx context.Context) error {
	return poll(ctx, "sentinels ready", func(ctx context.Context) error {
		for i, c := range s.clients {
			sen := s.Sentinels[i]
			m, err := c.Master(ctx, s.MasterName).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", sen, err)
			}
			if !healthy(m, "master") || m["num-slaves"] != "2" || m["num-other-sentinels"] != "2" {
				return fmt.Errorf("%s: master %s", sen, describe(m, "num-slaves", "num-other-sentinels"))
			}
			reps, err := c.Replicas(ctx, s.MasterName).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", sen, err)
			}
			for _, r := range reps {
				if !healthy(r, "slave") || r["master-link-status"] != "ok" {
					return fmt.Errorf("%s: replica %s", sen, describe(r, "master-link-status"))
				}
			}
			sens, err := c.Sentinels(ctx, s.MasterName).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", sen, err)
			}
			for _, o := range sens {
				if !healthy(o, "sentinel") {
					return fmt.Errorf("%s: sentinel %s", sen, describe(o))
				}
			}
		}
		return nil
	})
}

// healthy reports whether a sentinel's view of an instance (SENTINEL
// MASTER, REPLICAS or SENTINELS) shows it connected, up, of the given
// kind, with its last PING answered.
func healthy(inst map[string]string, kind string) bool {
	return inst["flags"] == kind && inst["last-ping-sent"] == "0"
}

// describe formats the address, flags and the named fields of a
// sentinel's view of an instance, for messages.
func describe(inst map[string]string, fields ...string) string {
	d := fmt.Sprintf("%s:%s flags=%s last-ping-sent=%s", inst["ip"], inst["port"], inst["flags"], inst["last-ping-sent"])
	for _, f := range fields {
		d += " " + f + "=" + inst[f]
	}
	return d
}

// SentinelAddrs returns the sentinels' addresses, for a client's
// SentinelAddrs.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, sen := range s.Sentinels {
		addrs[i] = sen.Addr
	}
	return addrs
}

// Server returns the data node (master or replica) at addr, or nil.
func (s *Sentinel) Server(addr string) *Server {
	for _, d := range append([]*Server{s.Master}, s.Replicas...) {
		if d.Addr == addr {
			return d
		}
	}
	return nil
}

// CurrentMaster asks the sentinels, in order, for the master's address
// (SENTINEL get-master-addr-by-name) and returns the first answer.
func (s *Sentinel) CurrentMaster(ctx context.Context) (string, error) {
	err := fmt.Errorf("no live sentinel")
	for i, c := range s.clients {
		if !s.Sentinels[i].Alive() {
			continue
		}
		var hp []string
		if hp, err = c.GetMasterAddrByName(ctx, s.MasterName).Result(); err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
	}
	return "", fmt.Errorf("redistopo: asking sentinels for the master: %v", err)
}

// KillMaster kills the current master (as the sentinels report it) with
// SIGKILL and returns it.
func (s *Sentinel) KillMaster() (old *Server) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	addr, err := s.CurrentMaster(ctx)
	if err != nil {
		s.t.Fatalf("%v", err)
	}
	old = s.Server(addr)
	if old == nil {
		s.t.Fatalf("redistopo: the sentinels report master %s, not one of this group's servers", addr)
	}
	old.Kill()
	return old
}

// WaitFailover polls until every live sentinel reports the same master,
// other than oldAddr, neither down nor in a failover, and that server
// answers ROLE as a master. It returns the new master's address. Then any
// client asking any sentinel finds the new master. (A sentinel may still
// be reconnecting to it: the flag "disconnected" is not waited out.)
func (s *Sentinel) WaitFailover(ctx context.Context, oldAddr string) (newAddr string, err error) {
	err = poll(ctx, "failover from "+oldAddr, func(ctx context.Context) error {
		newAddr = ""
		for i, c := range s.clients {
			if !s.Sentinels[i].Alive() {
				continue
			}
			m, err := c.Master(ctx, s.MasterName).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", s.Sentinels[i], err)
			}
			addr := net.JoinHostPort(m["ip"], m["port"])
			switch {
			case addr == oldAddr:
				return fmt.Errorf("%s still reports %s (flags %s)", s.Sentinels[i], addr, m["flags"])
			case newAddr != "" && addr != newAddr:
				return fmt.Errorf("sentinels disagree: %s and %s", newAddr, addr)
			case strings.Contains(m["flags"], "down") || strings.Contains(m["flags"], "failover"):
				return fmt.Errorf("%s: master %s", s.Sentinels[i], describe(m))
			}
			newAddr = addr
		}
		if newAddr == "" {
			return stopPolling{fmt.Errorf("no live sentinel")}
		}
		return checkRole(ctx, s.Server(newAddr), newAddr, "master")
	})
	if err != nil {
		return "", fmt.Errorf("redistopo: %w", err)
	}
	return newAddr, nil
}

// WaitFirstNamed polls the live sentinels until a majority of them name the
// same master other than oldAddr (SENTINEL get-master-addr-by-name, what a
// client asks; a single sentinel may name the pick of an attempt that a
// later epoch overrides), and
// returns that address and the time of the answer: the moment the new
// master is settled (a client that asked a single sentinel earlier may have
// found it a little sooner), as closely as a poll every 25 ms tells it.
// Bounds measured from it are so slightly looser than from the first answer.
// The leader of the failover names the new master once that replica
// reports itself a master, up to a second after the promotion (a
// sentinel polls INFO once a second); the other sentinels follow later,
// which WaitFailover waits for.
func (s *Sentinel) WaitFirstNamed(ctx context.Context, oldAddr string) (newAddr string, at time.Time, err error) {
	// A majority, not the first sentinel: a sentinel that led an attempt a
	// later epoch overrode names a master that will not last.
	majority := len(s.clients)/2 + 1
	err = poll(ctx, "a majority of sentinels naming a master other than "+oldAddr, func(ctx context.Context) error {
		var errs []error
		named := map[string]int{}
		for i, c := range s.clients {
			if !s.Sentinels[i].Alive() {
				continue
			}
			hp, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s: %w", s.Sentinels[i], err))
			case len(hp) != 2:
				errs = append(errs, fmt.Errorf("%s: get-master-addr-by-name: %v", s.Sentinels[i], hp))
			case net.JoinHostPort(hp[0], hp[1]) == oldAddr:
				errs = append(errs, fmt.Errorf("%s still names %s", s.Sentinels[i], oldAddr))
			default:
				addr := net.JoinHostPort(hp[0], hp[1])
				if named[addr]++; named[addr] >= majority {
					newAddr, at = addr, time.Now()
					return nil
				}
			}
		}
		if len(errs) == 0 && len(named) == 0 {
			return stopPolling{fmt.Errorf("no live sentinel")}
		}
		return fmt.Errorf("no majority yet (%v): %w", named, errors.Join(errs...))
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("redistopo: %w", err)
	}
	return newAddr, at, nil
}

// checkRole checks that the server at addr answers ROLE with role. srv is
// the harness's Server at addr, or nil for a server it did not start.
func checkRole(ctx context.Context, srv *Server, addr, role string) error {
	var c *redis.Client
	if srv != nil {
		c = srv.Client()
	} else {
		c = redis.NewClient(adminOptions(addr))
		defer c.Close()
	}
	res, err := c.Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("ROLE at %s: %w", addr, err)
	}
	if len(res) == 0 || res[0] != role {
		return fmt.Errorf("ROLE at %s: %v, want %s", addr, res, role)
	}
	return nil
}
