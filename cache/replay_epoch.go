package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// epochKnowledge is what this process last verified of one epoch marker.
type epochKnowledge struct {
	seen  bool
	gen   int64
	runID string // the server that held the marker
}

// epochMarker is the value of an epoch marker: "<generation>/<floor in Unix ms>".
type epochMarker struct {
	gen   int64
	floor time.Time // zero: no floor
}

func (m epochMarker) String() string {
	var ms int64
	if !m.floor.IsZero() {
		ms = m.floor.UnixMilli()
	}
	return strconv.FormatInt(m.gen, 10) + "/" + strconv.FormatInt(ms, 10)
}

// parseMarker reads a marker value; ok is false for anything malformed.
func parseMarker(s string) (m epochMarker, ok bool) {
	g, f, found := strings.Cut(s, "/")
	if !found {
		return m, false
	}
	gen, err1 := strconv.ParseInt(g, 10, 64)
	ms, err2 := strconv.ParseInt(f, 10, 64)
	if err1 != nil || err2 != nil || gen < 1 || ms < 0 {
		return m, false
	}
	m.gen = gen
	if ms > 0 {
		m.floor = time.UnixMilli(ms)
	}
	return m, true
}

// Ways an epoch step writes the marker.
const (
	markerKeep      = iota // the marker as read is right
	markerCreate           // SET NX: there was none
	markerOverwrite        // SET: replace a marker from before a loss
)

// epochInput is what a verification read: the server's identity and uptime,
// and the marker (present false when the key did not exist).
type epochInput struct {
	runID  string
	uptime time.Duration
	// promoted: the server took over as master from another one since it
	// started (a failover), so its start says nothing of when records were
	// last written to its predecessor.
	promoted bool
	present  bool
	marker   string
}

// epochStep decides, from what this process knew of a marker (k) and what the
// server shows now (in), whether the shard may have lost records, and
// returns the marker that must hold afterwards, how to write it, and the
// floor to apply. now is the gateway's clock, skew the future skew a proof
// may carry, window the acceptance window of a proof.
//
//   - The marker is gone while this process knew it, or its generation went
//     back, or the server is another one (another run_id: a restart, a
//     failover): records may be lost. Declare it: a new generation whose
//     floor is now + skew (a proof accepted before now was issued before it),
//     or, for a server that started less than a window ago and was not
//     promoted since, its start + skew (nothing reached it before it started;
//     uptime is in whole seconds, so the start read is never too early).
//   - The marker is gone and this process never saw it: a new store, or one
//     that lost its records before this process looked. If the server was
//     promoted (a failover), the floor is now + skew; if it started less than
//     a window ago, records before its start are gone: the floor is its
//     start + skew. Otherwise nothing is known to be lost.
//   - Otherwise adopt the marker: its generation and floor (another replica
//     may have declared a loss).
func epochStep(k epochKnowledge, in epochInput, now time.Time, skew, window time.Duration) (next epochKnowledge, m epochMarker, write int, why string) {
	cur, valid := parseMarker(in.marker)
	present := in.present && valid
	switch {
	case k.seen && (!present || cur.gen < k.gen || in.runID != k.runID):
		lost := now
		switch {
		case in.runID != k.runID && in.uptime < window && !in.promoted:
			lost = now.Add(-in.uptime) // a restart: nothing was written after the old server stopped
			why = LossRestarted
		case in.runID != k.runID:
			why = LossServerChanged
		case !present:
			why = LossMarkerGone
		default:
			why = LossMarkerOlder
		}
		m = epochMarker{gen: max(k.gen, cur.gen) + 1, floor: lost.Add(skew)}
		if present && cur.floor.After(m.floor) {
			m.floor = cur.floor
		}
		write = markerOverwrite
		if !in.present {
			write = markerCreate
		}
	case !present:
		m = epochMarker{gen: max(cur.gen, 0) + 1}
		switch {
		case in.promoted:
			m.floor = now.Add(skew)
			why = LossServerChanged
		case in.uptime < window:
			m.floor = now.Add(-in.uptime).Add(skew)
			why = LossRestarted
		}
		write = markerCreate
		if in.present {
			write = markerOverwrite // malformed: replace it
		}
	default:
		m, write = cur, markerKeep
		if cur.gen != k.gen && !cur.floor.IsZero() {
			why = LossDeclaredElsewhere
		}
	}
	return epochKnowledge{seen: true, gen: m.gen, runID: in.runID}, m, write, why
}

// Why a replay store raised its floor, as RedisReplayOptions.OnLoss is told.
const (
	// LossRestarted: the server started less than a proof window ago
	// (another run_id than before, or the first look at a young server).
	LossRestarted = "restarted"
	// LossServerChanged: another server answers (a failover).
	LossServerChanged = "server_changed"
	// LossMarkerGone: the epoch marker is gone (a flush, or a restart that
	// kept the run_id, which Redis does not do).
	LossMarkerGone = "marker_gone"
	// LossMarkerOlder: the marker went back to an older generation.
	LossMarkerOlder = "marker_older"
	// LossDeclaredElsewhere: another replica declared a loss.
	LossDeclaredElsewhere = "declared_elsewhere"
)

// errOldRedis is returned when the server cannot run SET … NX GET.
var errOldRedis = errors.New("Redis 7.0 or later is required (SET with NX and GET)")

// verify establishes whether the shard's server kept its records: it reads
// the server's run_id, version and uptime and the epoch marker, applies
// epochStep, writes the marker when it must, and raises the shard's floor.
// One verification runs at a time per shard; the ones waiting behind it use
// its result when it is recent enough.
func (sh *redisShard) verify(ctx context.Context) error {
	r := sh.r
	idEpoch := r.ids.Epoch()
	if !sh.vmu.TryLock() {
		// While the breaker is not closed its probe is the one out: the
		// others fail at once rather than queue behind it.
		if sh.breaker.State() != "closed" {
			return fmt.Errorf("%w: a verification is out", ErrBreakerOpen)
		}
		sh.vmu.Lock()
	}
	defer sh.vmu.Unlock()
	if st := sh.state.Load(); st != nil && st.idEpoch == idEpoch {
		return nil // verified meanwhile, by the call ahead
	}
	return sh.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		key, node, err := r.markerKey(ctx, sh)
		if err != nil {
			return err
		}
		pipe := node.Pipeline()
		info := pipe.Info(ctx, "server", "replication")
		cur := pipe.GetEx(ctx, key, markerTTL)
		_, _ = pipe.Exec(ctx)
		if err := info.Err(); err != nil {
			return fmt.Errorf("INFO server replication: %w", err)
		}
		if err := cur.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		srv := parseServerInfo(info.Val())
		if srv.runID == "" {
			return errors.New("INFO server gave no run_id")
		}
		if srv.major < 7 {
			return errOldRedis
		}
		in := epochInput{runID: srv.runID, uptime: srv.uptime, promoted: srv.promoted, present: cur.Err() == nil, marker: cur.Val()}
		for range 2 { // a second round when another replica created the marker first
			r.mu.Lock()
			k := r.epochs[key]
			r.mu.Unlock()
			now := r.clock.Now()
			next, m, write, why := epochStep(k, in, now, time.Duration(r.skew.Load()), time.Duration(r.window.Load()))
			value := m.String()
			switch write {
			case markerCreate:
				prev, err := node.SetArgs(ctx, key, value, redis.SetArgs{Mode: "NX", Get: true, TTL: markerTTL}).Result()
				if err == nil { // someone else's marker got there first: judge that one
					in.present, in.marker = true, prev
					continue
				}
				if !errors.Is(err, redis.Nil) {
					return err
				}
			case markerOverwrite:
				if err := node.Set(ctx, key, value, markerTTL).Err(); err != nil {
					return err
				}
			}
			r.mu.Lock()
			r.epochs[key] = next
			r.mu.Unlock()
			// A floor older than a proof window refuses nothing: not worth a word.
			live := m.floor.After(now.Add(-time.Duration(r.window.Load())))
			if !m.floor.IsZero() && atomicMax(&sh.floor, m.floor.UnixNano()) && live && why != "" && r.onLoss != nil {
				r.onLoss(why, m.floor)
			}
			sh.refreshedAt.Store(time.Now().UnixNano())
			sh.failingSince.Store(0)
			sh.state.Store(&shardState{markerKey: key, marker: value, idEpoch: idEpoch})
			return nil
		}
		return errors.New("the epoch marker changed during verification")
	})
}

// markerKey returns the shard's marker key and a client that reaches the
// shard's master. On Cluster the key carries the first hash tag {0}, {1}, …
// whose slot the master owns: after a promotion the replica that took over
// the slots finds the same key, and with it what the old master held.
func (r *RedisReplay) markerKey(ctx context.Context, sh *redisShard) (string, redis.Cmdable, error) {
	if r.cluster == nil {
		return r.prefix + epochSpace, r.client, nil
	}
	for i := range 4096 {
		key := r.prefix + epochSpace + ":{" + strconv.Itoa(i) + "}"
		node, err := r.cluster.MasterForKey(ctx, key)
		if err != nil {
			return "", nil, err
		}
		if node.Options().Addr == sh.node {
			return key, node, nil
		}
	}
	return "", nil, fmt.Errorf("no slot of the cluster map belongs to master %s", sh.node)
}

// serverInfo is what verify reads of INFO server.
type serverInfo struct {
	runID    string
	major    int
	uptime   time.Duration
	promoted bool // INFO replication: a previous replication ID (second_repl_offset set)
}

func parseServerInfo(s string) serverInfo {
	var si serverInfo
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "run_id":
			si.runID = v
		case "redis_version":
			maj, _, _ := strings.Cut(v, ".")
			si.major, _ = strconv.Atoi(maj)
		case "second_repl_offset":
			si.promoted = v != "-1"
		case "uptime_in_seconds":
			n, _ := strconv.ParseInt(v, 10, 64)
			si.uptime = time.Duration(n) * time.Second
		}
	}
	return si
}

// ServerIdentities records the run_id of every Redis server a client's
// connections reached. Each run_id not seen before moves Epoch on: a replay
// store then verifies its shards again before it trusts a fresh answer, so
// a restarted server or a new master is noticed at its first connection,
// even by a replica that sent nothing while the old one went away.
type ServerIdentities struct {
	mu    sync.Mutex
	seen  map[string]struct{}
	epoch atomic.Uint64
}

// Epoch returns a number that changes whenever a connection reached a server
// not seen before (0 for a nil ServerIdentities).
func (s *ServerIdentities) Epoch() uint64 {
	if s == nil {
		return 0
	}
	return s.epoch.Load()
}

// onConnect is go-redis's OnConnect hook: it reads the new connection's
// server run_id. A server that refuses INFO (an ACL without it) is not an
// error here: the connection stays usable, and the replay store's own
// verification reports the refusal.
func (s *ServerIdentities) onConnect(ctx context.Context, cn *redis.Conn) error {
	info, err := cn.Info(ctx, "server").Result()
	if err != nil {
		var reply redis.Error
		if errors.As(err, &reply) {
			return nil
		}
		return err
	}
	id := parseServerInfo(info).runID
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[id]; ok {
		return nil
	}
	if s.seen == nil || len(s.seen) >= 256 {
		s.seen = map[string]struct{}{}
	}
	s.seen[id] = struct{}{}
	s.epoch.Add(1)
	return nil
}

// RedisHalfOpenAfter is how long a Redis breaker stays open before it lets a
// probe through: a Redis that answers again is used again within about this.
const RedisHalfOpenAfter = 500 * time.Millisecond

// clusterStateReload is how often a Cluster client reloads its slot map
// while in use (go-redis defaults to 60 s), on top of the reloads a failure
// asks for.
const clusterStateReload = time.Second

// NewRedisClient returns a client for o (from RedisConfig.UniversalOptions)
// and the record of the servers its connections reach. It does no network
// I/O. A Cluster client reloads its slot map every second while in use.
func NewRedisClient(o *redis.UniversalOptions) (redis.UniversalClient, *ServerIdentities) {
	ids := &ServerIdentities{}
	o.OnConnect = ids.onConnect
	if o.MasterName == "" && (len(o.Addrs) > 1 || o.IsClusterMode) {
		co := o.Cluster()
		co.ClusterStateReloadInterval = clusterStateReload
		return redis.NewClusterClient(co), ids
	}
	return redis.NewUniversalClient(o), ids
}
