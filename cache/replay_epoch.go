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

// epochMarker is the value of an epoch marker:
// "<generation>/<floor in Unix ms>/<run_id of the server it was written on>".
type epochMarker struct {
	gen   int64
	floor time.Time // zero: no floor
	runID string    // "" in a marker written before run_ids were kept
}

func (m epochMarker) String() string {
	var ms int64
	if !m.floor.IsZero() {
		ms = m.floor.UnixMilli()
	}
	return strconv.FormatInt(m.gen, 10) + "/" + strconv.FormatInt(ms, 10) + "/" + m.runID
}

// parseMarker reads a marker value; ok is false for anything malformed.
func parseMarker(s string) (m epochMarker, ok bool) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return m, false
	}
	gen, err1 := strconv.ParseInt(parts[0], 10, 64)
	ms, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil || gen < 1 || ms < 0 {
		return m, false
	}
	m.gen = gen
	if ms > 0 {
		m.floor = time.UnixMilli(ms)
	}
	if len(parts) == 3 {
		m.runID = parts[2]
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
// returns the marker that must hold afterwards, how to write it, the floor
// to apply (in the marker) and why. now is the gateway's clock, skew the
// future skew a proof may carry, window the acceptance window of a proof.
//
//   - Another server answers than the one the marker was written on, or than
//     the one this process verified (a restart, a failover), or the marker
//     is gone or went back while this process knew it (a flush, a restart, a
//     failover that lost the marker's last write): records may be lost.
//     Declare it: a new generation, written with this server's run_id, whose
//     floor is now + skew (a proof accepted before now was issued before
//     it). A restarted server's start would be an earlier floor, but a flush
//     after the restart would slip under it: now is the one floor that is
//     always late enough.
//   - There is no marker and this process never saw one: a new store, or one
//     that lost its records before this process looked. Nothing tells them
//     apart, so the floor is the same as for a declared loss. It costs a new
//     store (or a key prefix used for the first time) one skew of refusals.
//   - Otherwise adopt the marker: its generation and floor (another replica
//     may have declared a loss).
func epochStep(k epochKnowledge, in epochInput, now time.Time, skew, window time.Duration) (next epochKnowledge, m epochMarker, write int, why string) {
	cur, valid := parseMarker(in.marker)
	present := in.present && valid
	serverChanged := (present && cur.runID != "" && cur.runID != in.runID) || (k.seen && in.runID != k.runID)
	markerLost := k.seen && (!present || cur.gen < k.gen)
	if present && !serverChanged && !markerLost {
		m, write = cur, markerKeep
		if cur.gen != k.gen && !cur.floor.IsZero() {
			why = LossDeclaredElsewhere
		}
		return epochKnowledge{seen: true, gen: m.gen, runID: in.runID}, m, write, why
	}
	switch {
	case serverChanged && in.uptime < window && !in.promoted:
		why = LossRestarted
	case serverChanged:
		why = LossServerChanged
	case !present:
		why = LossMarkerGone
	default:
		why = LossMarkerOlder
	}
	m = epochMarker{gen: max(k.gen, cur.gen) + 1, floor: now.Add(skew), runID: in.runID}
	if present && cur.floor.After(m.floor) {
		m.floor = cur.floor
	}
	write = markerOverwrite
	if !in.present {
		write = markerCreate
	}
	return epochKnowledge{seen: true, gen: m.gen, runID: in.runID}, m, write, why
}

// Why a replay store raised its floor, as RedisReplayOptions.OnLoss is told.
const (
	// LossRestarted: the server started less than a proof window ago
	// (another run_id than before, or the first look at a young server).
	LossRestarted = "restarted"
	// LossServerChanged: another server answers than the one the marker was
	// written on or this process verified (a failover).
	LossServerChanged = "server_changed"
	// LossMarkerGone: the epoch marker is gone (a flush), or there was none
	// at the first look (a new store, or a key prefix used for the first
	// time: nothing tells them from a flushed one).
	LossMarkerGone = "marker_gone"
	// LossMarkerOlder: the marker went back to an older generation.
	LossMarkerOlder = "marker_older"
	// LossDeclaredElsewhere: another replica declared a loss.
	LossDeclaredElsewhere = "declared_elsewhere"
)

// errOldRedis is returned for a server older than the one the store is
// built and tested against (GETEX, for the marker, needs 6.2).
var errOldRedis = errors.New("Redis 7.0 or later is required")

// errEvicting is returned for a server that may evict keys to free memory:
// an evicted replay record is a proof that can be used again, and nothing
// would tell.
var errEvicting = errors.New("maxmemory-policy must be noeviction: replay records must never be evicted")

// verify establishes whether the shard's server kept its records: it reads
// the server's run_id, version and uptime and the epoch marker, applies
// epochStep, writes the marker when it must, and raises the shard's floor.
// One verification runs at a time per shard; the ones waiting behind it use
// its result when it is recent enough.
func (sh *redisShard) verify(ctx context.Context) error {
	idEpoch := sh.r.ids.Epoch()
	if !sh.vmu.TryLock() {
		// While the breaker is not closed its probe is the one out: the
		// others fail at once rather than queue behind it.
		if sh.breaker.State() != BreakerClosed {
			return fmt.Errorf("%w: a verification is out", ErrBreakerOpen)
		}
		sh.vmu.Lock()
	}
	defer sh.vmu.Unlock()
	if st := sh.state.Load(); st != nil && st.idEpoch == idEpoch {
		return nil // verified meanwhile, by the call ahead
	}
	return sh.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, sh.r.timeout)
		defer cancel()
		return sh.verifyServer(ctx, idEpoch)
	})
}

// verifyServer is one verification, through the breaker: it reads the
// server and the marker, then settles the marker.
func (sh *redisShard) verifyServer(ctx context.Context, idEpoch uint64) error {
	key, err := sh.r.markerKey(ctx, sh)
	if err != nil {
		return err
	}
	in, err := sh.readServer(ctx, key)
	if err != nil {
		return err
	}
	for range 2 { // a second round when another replica created the marker first
		if raced, err := sh.settleMarker(ctx, key, &in, idEpoch); !raced {
			return err
		}
	}
	return errors.New("the epoch marker changed during verification")
}

// readServer reads, in one round trip, what a verification judges: the
// server's identity, uptime and role, and the marker under key (whose TTL
// it refreshes). It fails for a server the store cannot trust with replay
// records (too old, or evicting keys).
func (sh *redisShard) readServer(ctx context.Context, key string) (epochInput, error) {
	pipe := sh.client.Pipeline()
	info := pipe.Info(ctx, "server", "replication", "memory")
	cur := pipe.GetEx(ctx, key, markerTTL)
	_, _ = pipe.Exec(ctx)
	if err := info.Err(); err != nil {
		return epochInput{}, fmt.Errorf("INFO server replication: %w", err)
	}
	if err := cur.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return epochInput{}, err
	}
	srv := parseServerInfo(info.Val())
	if srv.runID == "" {
		return epochInput{}, errors.New("INFO server gave no run_id")
	}
	if srv.major < 7 {
		return epochInput{}, errOldRedis
	}
	if srv.evicts {
		return epochInput{}, errEvicting
	}
	return epochInput{runID: srv.runID, uptime: srv.uptime, promoted: srv.promoted, present: cur.Err() == nil, marker: cur.Val()}, nil
}

// settleMarker applies epochStep to what this process knew of the marker
// under key and what the server shows (in), writes the marker when it must,
// and adopts the result. raced is true when another replica created the
// marker first: in then holds that marker, to be judged in another round.
func (sh *redisShard) settleMarker(ctx context.Context, key string, in *epochInput, idEpoch uint64) (raced bool, err error) {
	r := sh.r
	r.mu.Lock()
	k := r.epochs[key]
	r.mu.Unlock()
	now := r.clock.Now()
	next, m, write, why := epochStep(k, *in, now, time.Duration(r.skew.Load()), time.Duration(r.window.Load()))
	value := m.String()
	if write == markerKeep {
		value = in.marker // as the batches will read it back
	}
	switch write {
	case markerCreate:
		prev, err := sh.client.SetArgs(ctx, key, value, redis.SetArgs{Mode: "NX", Get: true, TTL: markerTTL}).Result()
		if err == nil { // someone else's marker got there first: judge that one
			in.present, in.marker = true, prev
			return true, nil
		}
		if !errors.Is(err, redis.Nil) {
			return false, err
		}
	case markerOverwrite:
		if err := sh.client.Set(ctx, key, value, markerTTL).Err(); err != nil {
			return false, err
		}
	}
	sh.adopt(key, value, next, m, why, now, idEpoch)
	return false, nil
}

// adopt records a settled marker: what this process now knows of it, the
// shard's floor (told to OnLoss when raised by a loss), and the shard's
// verified state.
func (sh *redisShard) adopt(key, value string, next epochKnowledge, m epochMarker, why string, now time.Time, idEpoch uint64) {
	r := sh.r
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
}

// markerKey returns the shard's marker key. On Cluster it carries the first
// hash tag {0}, {1}, … whose slot the shard's master owns: after a
// promotion the replica that took over the slots finds the same key, and
// with it what the old master held.
func (r *RedisReplay) markerKey(ctx context.Context, sh *redisShard) (string, error) {
	if r.cluster == nil {
		return r.prefix + epochSpace, nil
	}
	for i := range 4096 {
		key := r.prefix + epochSpace + ":{" + strconv.Itoa(i) + "}"
		node, err := r.cluster.MasterForKey(ctx, key)
		if err != nil {
			return "", err
		}
		if node.Options().Addr == sh.node {
			return key, nil
		}
	}
	return "", fmt.Errorf("no slot of the cluster map belongs to master %s", sh.node)
}

// serverInfo is what verify reads of INFO server.
type serverInfo struct {
	runID    string
	major    int
	uptime   time.Duration
	promoted bool // INFO replication: a previous replication ID (second_repl_offset set)
	evicts   bool // INFO memory: a maxmemory-policy other than noeviction
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
		case "maxmemory_policy":
			si.evicts = v != "noeviction"
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

// SeedEpochMarker writes the epoch marker of a single Redis's replay store
// under prefix as a store in service long before now (generation 1, no
// floor, no run_id), to expire after ttl. It is for tests and benchmarks
// that measure a store in service: a key prefix used for the first time is
// otherwise a store that may have lost its records, whose proofs issued
// before now plus the skew are refused. A gateway never calls it.
func SeedEpochMarker(ctx context.Context, c redis.Cmdable, prefix string, ttl time.Duration) error {
	return c.Set(ctx, prefix+epochSpace, epochMarker{gen: 1}.String(), ttl).Err()
}
