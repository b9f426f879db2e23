package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
)

// Key spaces of the replay store under the key prefix.
const (
	replaySpace = "v1:dpop:"
	// epochSpace holds the epoch markers (see RedisReplay).
	epochSpace = "v1:epoch"
	// markerTTL keeps a marker alive between refreshes (every key has a TTL).
	markerTTL = 24 * time.Hour
	// markerRefresh is how often a batch refreshes its marker's TTL.
	markerRefresh = time.Hour
	// clusterReloadEvery bounds the slot-map reloads asked for after failures.
	clusterReloadEvery = 100 * time.Millisecond
)

// StoreFailure is the error of a shared store that could not answer (Redis
// down, slow, refusing writes, or its breaker open). Floor is the earliest
// issue time of a proof that no replica can have had accepted through the
// store before it began failing: when it began failing, plus the future skew
// a proof may carry.
type StoreFailure struct {
	Floor time.Time
	Err   error
}

func (e *StoreFailure) Error() string { return "cache: redis replay store: " + e.Err.Error() }
func (e *StoreFailure) Unwrap() error { return e.Err }

// RedisReplayOptions configures NewRedisReplay.
type RedisReplayOptions struct {
	// Prefix is put before every key (pass RedisConfig.Prefix()).
	Prefix string
	// Timeout bounds one round trip (DefaultRedisTimeout when <= 0).
	Timeout time.Duration
	// Breaker guards a single server or a Sentinel master (nil: none).
	Breaker *Breaker
	// NewBreaker makes the breaker of one Cluster master, named by its
	// address, so that a dead shard fails only the keys it owns (nil: a
	// breaker named "redis" per node).
	NewBreaker func(node string) *Breaker
	// Identities is what NewRedisClient observed of the servers behind the
	// client (nil: a restart is noticed by its markers only).
	Identities *ServerIdentities
	// FutureSkew is how far ahead of the gateway's clock a proof's iat may be
	// (the largest dpop_future_skew of the sites sharing the store; raise it
	// later with AllowFutureSkew).
	FutureSkew time.Duration
	// Clock tells time (authz.SystemClock when nil).
	Clock authz.Clock
	// OnLoss, when not nil, is told each time a shard raises its floor:
	// why (one of the Loss* constants) and the floor. It runs on the request
	// path, rarely; it must not block.
	OnLoss func(why string, floor time.Time)
}

// RedisReplay is the replay store shared by every replica through Redis
// (single server, Sentinel or Cluster).
//
// Recording. Each FirstUse is one `SET <prefix>v1:dpop:<key> <value> PX <ttl>
// NX`, whose value is unique to the call. OK is a fresh proof. When the key
// was there, a GET tells this call's own value (go-redis, or a timeout,
// sent a SET again whose first attempt the server had executed: still
// fresh) from anyone else's (a replay), so a retried or timed-out SET never
// refuses the proof that set the key.
//
// Lost records. A Redis that restarts without persistence, a failover that
// loses the last replicated writes, or a FLUSHALL would make every recent
// proof new again. Each shard (the whole server, or one Cluster master) holds
// an epoch marker, <prefix>v1:epoch (with a hash tag on Cluster), whose value
// is a generation and a floor. The store reads the marker in every batch,
// after the SETs, and checks the identity (run_id) of the server behind it
// whenever a connection is made or a call failed. When the marker is gone or
// went back, or the server is another one than before, the store declares a
// loss: it writes a new generation with floor = now + the future skew, and
// from then on, on every replica, a proof issued before the floor is refused
// with authz.ErrStoreRecovering until it would be too old anyway (the whole
// acceptance window). Clients sign a fresh proof per request, so an honest
// client loses the requests of about the future skew after a loss.
//
// Shards. On Cluster every master has its own queue, breaker and marker:
// a dead shard fails only the keys it owns, and a failure asks go-redis to
// reload the slot map (at most every 100 ms) so a promotion is followed at
// once instead of after go-redis's periodic reload.
//
// Batching. Calls that arrive while one is waiting for its shard are sent
// together, as one pipeline, when it returns. Nothing waits to fill a batch.
// This is hand-written rather than go-redis's AutoPipeliner, which flushes on
// a timer (adding latency to an idle gateway) and cannot put the marker read
// after each batch's SETs nor keep a breaker per shard.
type RedisReplay struct {
	client     redis.UniversalClient
	cluster    *redis.ClusterClient // nil unless Cluster
	prefix     string
	timeout    time.Duration
	clock      authz.Clock
	ids        *ServerIdentities
	newBreaker func(string) *Breaker
	onLoss     func(string, time.Time)

	skew   atomic.Int64 // largest future skew of the users, ns
	window atomic.Int64 // largest ttl asked for, ns: the acceptance window

	valuePrefix string        // unique to this store: the values it writes
	seq         atomic.Uint64 // makes each value unique

	single   *redisShard // single server and Sentinel
	mu       sync.Mutex
	shards   map[string]*redisShard    // Cluster: by master address
	epochs   map[string]epochKnowledge // by marker key
	reloadAt atomic.Int64              // last slot-map reload asked for (UnixNano)
	// failingSince is when finding a key's shard began failing (UnixNano;
	// 0 while it works).
	failingSince atomic.Int64
}

// NewRedisReplay returns a RedisReplay over client. It does no network I/O.
func NewRedisReplay(client redis.UniversalClient, o RedisReplayOptions) *RedisReplay {
	if o.Timeout <= 0 {
		o.Timeout = DefaultRedisTimeout
	}
	if o.Clock == nil {
		o.Clock = authz.SystemClock
	}
	if o.NewBreaker == nil {
		o.NewBreaker = func(string) *Breaker { return NewBreaker("redis", WithHalfOpenAfter(RedisHalfOpenAfter)) }
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &RedisReplay{
		client: client, prefix: o.Prefix, timeout: o.Timeout, clock: o.Clock, ids: o.Identities,
		newBreaker: o.NewBreaker, onLoss: o.OnLoss, valuePrefix: hex.EncodeToString(b[:]) + ":",
		shards: map[string]*redisShard{}, epochs: map[string]epochKnowledge{},
	}
	r.skew.Store(int64(o.FutureSkew))
	if cc, ok := client.(*redis.ClusterClient); ok {
		r.cluster = cc
	} else {
		r.single = &redisShard{r: r, client: client, breaker: o.Breaker}
	}
	return r
}

// AllowFutureSkew raises the future skew the store allows for to d, when d
// is larger than what it has.
func (r *RedisReplay) AllowFutureSkew(d time.Duration) { atomicMax(&r.skew, int64(d)) }

// Breakers returns the breakers of the Cluster shards seen so far (none for
// a single server or Sentinel, whose breaker the caller passed).
func (r *RedisReplay) Breakers() []*Breaker {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Breaker
	for _, sh := range r.shards {
		out = append(out, sh.breaker)
	}
	return out
}

// FirstUse records key in Redis for ttl (rounded up to whole milliseconds)
// and reports whether it was not already there. An error is a *StoreFailure
// when Redis did not answer in time, refused, or its breaker is open, and
// wraps authz.ErrStoreRecovering when the proof was issued before records
// may have been lost.
func (r *RedisReplay) FirstUse(ctx context.Context, key string, issuedAt time.Time, ttl time.Duration) (bool, error) {
	if ttl < time.Millisecond {
		return false, errBadTTL(ttl)
	}
	atomicMax(&r.window, int64(ttl))
	full := r.prefix + replaySpace + key
	sh, err := r.verifiedShard(ctx, full, issuedAt)
	if err != nil {
		return false, err
	}
	val := r.callValue()
	call, err := sh.setNX(ctx, full, val, ttl)
	if err != nil {
		return false, r.failure(ctx, sh, err)
	}
	if errors.Is(call.cmd.Err(), redis.Nil) {
		own, err := sh.setByCall(ctx, full, val)
		if err != nil {
			return false, r.failure(ctx, sh, err)
		}
		if !own {
			return false, nil // set by another call: a replay
		}
	}
	if call.untrusted != nil {
		return false, r.failure(ctx, sh, call.untrusted)
	}
	if issuedAt.UnixNano() < sh.floor.Load() {
		return false, sh.recovering() // the batch's marker check declared or learned of a loss
	}
	return true, nil
}

// verifiedShard returns the shard that owns full, verified, or the error
// FirstUse returns: a *StoreFailure, or for a proof issued before the
// shard's floor one that wraps authz.ErrStoreRecovering.
func (r *RedisReplay) verifiedShard(ctx context.Context, full string, issuedAt time.Time) (*redisShard, error) {
	sh, err := r.shardFor(ctx, full)
	if err != nil {
		return nil, r.failure(ctx, nil, err)
	}
	if r.failingSince.Load() != 0 { // no write per request while it answers
		r.failingSince.Store(0)
	}
	if issuedAt.UnixNano() < sh.floor.Load() {
		return nil, sh.recovering()
	}
	if sh.state.Load() == nil {
		if err := sh.verify(ctx); err != nil {
			return nil, r.failure(ctx, sh, err)
		}
		if issuedAt.UnixNano() < sh.floor.Load() {
			return nil, sh.recovering()
		}
	}
	return sh, nil
}

// setNX sends `SET full val PX ttl NX` in the shard's next batch and
// returns the call, whose command's error is nil (OK: set) or redis.Nil
// (the key was there).
func (sh *redisShard) setNX(ctx context.Context, full, val string, ttl time.Duration) (*replayCall, error) {
	ms := int64((ttl + time.Millisecond - 1) / time.Millisecond)
	for attempt := 0; ; attempt++ {
		call := &replayCall{
			cmd: redis.NewStatusCmd(ctx, "set", full, val, "px", ms, "nx"),
		}
		err := sh.run(ctx, call)
		if err == nil {
			if err = call.cmd.Err(); errors.Is(err, redis.Nil) {
				err = nil
			}
		}
		if err == nil {
			return call, nil
		}
		// A call that timed out is sent once more, with the same value: if
		// the first attempt reached the server, the second finds its own
		// value and the proof is still fresh. A slow moment of Redis (or of
		// this machine) then costs a second round trip instead of a refusal.
		if attempt > 0 || ctx.Err() != nil || !isTimeout(err) {
			return nil, err
		}
	}
}

// setByCall reports whether the key full, found there by a SET NX, holds
// val: a replay, unless this call's own earlier attempt set it (its reply
// lost, go-redis or setNX sent the SET again). Asked only then, so a fresh
// proof costs one command whose reply is not an error (go-redis handles a
// nil reply in a pipeline as a failed command, at a cost).
func (sh *redisShard) setByCall(ctx context.Context, full, val string) (bool, error) {
	gctx, cancel := context.WithTimeout(ctx, sh.r.timeout)
	prev, err := sh.client.Get(gctx, full).Result()
	cancel()
	switch {
	case err == nil && prev == val:
		return true, nil // fresh: this call's own first attempt set the key
	case err == nil || errors.Is(err, redis.Nil):
		return false, nil // set by another call
	default:
		return false, err
	}
}

// callValue is the value of a new record: the store's prefix and the next
// number in base 36, made with one allocation (the string).
func (r *RedisReplay) callValue() string {
	var b [64]byte
	v := strconv.AppendUint(append(b[:0], r.valuePrefix...), r.seq.Add(1), 36)
	return string(v)
}

// shardFor returns the shard that owns key.
func (r *RedisReplay) shardFor(ctx context.Context, key string) (*redisShard, error) {
	if r.cluster == nil {
		return r.single, nil
	}
	node, err := r.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, err
	}
	addr := node.Options().Addr
	r.mu.Lock()
	defer r.mu.Unlock()
	sh := r.shards[addr]
	if sh == nil || sh.client != redis.Cmdable(node) {
		// go-redis closes the client of a node that left the slot map and
		// makes a new one when the address comes back (a restarted master
		// promoted again): a shard keeps the client it was made with, so a
		// new client makes a new shard, verified before it is trusted. The
		// breaker, the floor and the failing-since carry over.
		next := &redisShard{r: r, node: addr, client: node}
		if sh == nil {
			next.breaker = r.newBreaker(addr)
		} else {
			next.breaker = sh.breaker
			next.floor.Store(sh.floor.Load())
			next.failingSince.Store(sh.failingSince.Load())
		}
		sh = next
		r.shards[addr] = sh
	}
	return sh, nil
}

// failure wraps err as a *StoreFailure, noting when the shard began failing.
// A failure that is not the caller's own doing also makes the shard verify
// the server again before it trusts a fresh answer, and on Cluster asks for
// a slot-map reload (a promoted replica is then found within a reload).
func (r *RedisReplay) failure(ctx context.Context, sh *redisShard, err error) error {
	now := r.clock.Now()
	since := now
	if ctx.Err() == nil {
		failing := &r.failingSince // no shard: the cluster's slot map could not be had
		if sh != nil {
			failing = &sh.failingSince
			if !errors.Is(err, ErrBreakerOpen) {
				sh.state.Store(nil)
			}
		}
		failing.CompareAndSwap(0, now.UnixNano())
		since = time.Unix(0, failing.Load())
		r.reloadSlots()
	}
	return &StoreFailure{Floor: since.Add(time.Duration(r.skew.Load())), Err: err}
}

// isTimeout reports whether err is a call that ran out of time (this
// store's per-call timeout or a network timeout), as opposed to a refusal.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// reloadSlots asks a ClusterClient to reload its slot map, at most every
// clusterReloadEvery.
func (r *RedisReplay) reloadSlots() {
	if r.cluster == nil {
		return
	}
	now := time.Now().UnixNano()
	last := r.reloadAt.Load()
	if now-last < int64(clusterReloadEvery) || !r.reloadAt.CompareAndSwap(last, now) {
		return
	}
	r.cluster.ReloadState(context.Background())
}

// atomicMax raises a to v when v is larger, and reports whether it did.
func atomicMax(a *atomic.Int64, v int64) bool {
	for {
		cur := a.Load()
		if v <= cur {
			return false
		}
		if a.CompareAndSwap(cur, v) {
			return true
		}
	}
}

// redisShard is one master: a single server, the Sentinel master, or one
// Cluster master. It batches its calls, keeps its breaker, and knows whether
// the server's records can be trusted (state) and which proofs it must
// refuse after a loss (floor).
type redisShard struct {
	r    *RedisReplay
	node string // Cluster: the master's address; "" otherwise
	// client reaches the shard's master alone: on Cluster the node's own
	// client, so that a batch is never rerouted to another server (a
	// promoted replica) without the shard verifying it first.
	client  redis.Cmdable
	breaker *Breaker

	mu      sync.Mutex
	queue   []*replayCall // calls waiting for the next batch
	sending bool          // a batch is out; its sender hands over to queue[0]

	vmu          sync.Mutex                 // one verification at a time
	state        atomic.Pointer[shardState] // nil: verify before trusting a fresh answer
	floor        atomic.Int64               // UnixNano: proofs issued before are refused
	failingSince atomic.Int64               // UnixNano of the first failure of the current run; 0 while it answers
	refreshedAt  atomic.Int64               // UnixNano of the last marker TTL refresh
}

// shardState is what a verification established: the marker key and value
// the shard's batches must read back, and the identity epoch it saw.
type shardState struct {
	markerKey string
	marker    string
	idEpoch   uint64
}

// recovering is the error for a proof issued before the shard's floor.
func (sh *redisShard) recovering() error {
	return fmt.Errorf("cache: redis replay store: %w", authz.ErrStoreRecovering)
}

// replayCall is one FirstUse waiting for its batch.
type replayCall struct {
	cmd       *redis.StatusCmd
	err       error     // the batch's error when its commands never ran
	untrusted error     // set when the batch could not confirm the shard kept its records
	turn      chan bool // true: send the next batch; false: the answer is in (nil for a call that led its batch)
	state     atomic.Int32
}

// States of a replayCall in the queue: a waiting call may be abandoned by
// its caller (its request ended) until a sender hands it the next batch.
const (
	callWaiting int32 = iota
	callHanded
	callAbandoned
)

// maxReplayBatch bounds the calls sent in one pipeline.
const maxReplayBatch = 512

// errBatchAbandoned is the answer of the calls of a batch whose sender
// panicked: they are released with an error rather than left waiting.
var errBatchAbandoned = errors.New("the batch carrying this call was abandoned")

// run sends call in the shard's next batch and waits for its answer. While
// the breaker is not closed the call goes alone: an open breaker fails it at
// once, queueing behind nobody, and a half-open one lets one probe through.
func (sh *redisShard) run(ctx context.Context, call *replayCall) error {
	if sh.breaker.State() != BreakerClosed {
		sh.send(ctx, []*replayCall{call})
		return call.err
	}
	sh.mu.Lock()
	lead := !sh.sending
	if !lead {
		// Only a call that waits behind a batch is told its turn: the
		// leader of an idle shard needs no channel.
		call.turn = make(chan bool, 1)
	}
	sh.queue = append(sh.queue, call)
	sh.sending = true
	sh.mu.Unlock()
	// Wait for the batch in flight: it answers this call (false), or this
	// call sends the next one (true). A caller whose request ends leaves,
	// unless the next batch was handed to it already (then it is on its way).
	if !lead {
		select {
		case lead = <-call.turn:
		case <-ctx.Done():
			if call.state.CompareAndSwap(callWaiting, callAbandoned) {
				return ctx.Err()
			}
			lead = <-call.turn
		}
	}
	if lead {
		sh.sendQueued(ctx, call)
	}
	return call.err
}

// sendQueued sends the queued calls (own first among them) in one batch,
// then hands the next batch to the first call queued meanwhile, or marks the
// shard idle.
func (sh *redisShard) sendQueued(ctx context.Context, own *replayCall) {
	sh.mu.Lock()
	n := min(len(sh.queue), maxReplayBatch)
	batch := make([]*replayCall, 0, n)
	for _, c := range sh.queue[:n] {
		if c == own || c.state.Load() != callAbandoned {
			batch = append(batch, c)
		}
	}
	sh.queue = append(sh.queue[:0], sh.queue[n:]...)
	sh.mu.Unlock()

	done := false
	defer func() {
		if !done { // a panic: release everyone, then let it go on
			for _, c := range batch {
				c.err = errBatchAbandoned
			}
		}
		sh.release(batch, own)
	}()
	sh.send(batchContext(ctx, len(batch)), batch)
	done = true
}

// send runs one batch through the breaker: the SETs, then the marker read
// that tells whether the shard still holds what it held when last verified.
func (sh *redisShard) send(ctx context.Context, batch []*replayCall) {
	st := sh.state.Load()
	now := time.Now()
	refresh := st != nil && now.UnixNano()-sh.refreshedAt.Load() > int64(markerRefresh)
	var marker *redis.StringCmd
	err := sh.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, sh.r.timeout)
		defer cancel()
		pipe := sh.client.Pipeline()
		for _, c := range batch {
			_ = pipe.Process(ctx, c.cmd)
		}
		if st != nil {
			if refresh {
				marker = pipe.GetEx(ctx, st.markerKey, markerTTL)
			} else {
				marker = pipe.Get(ctx, st.markerKey)
			}
		}
		_, _ = pipe.Exec(ctx)
		for _, c := range batch {
			if err := c.cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
		}
		if marker != nil && marker.Err() != nil && !errors.Is(marker.Err(), redis.Nil) {
			return marker.Err()
		}
		return nil
	})
	if err != nil {
		for _, c := range batch {
			if c.cmd.Err() == nil || errors.Is(c.cmd.Err(), redis.Nil) {
				c.err = err // never ran (breaker open), or cannot be trusted
			}
		}
		return
	}
	sh.failingSince.Store(0)
	if refresh {
		sh.refreshedAt.Store(now.UnixNano())
	}
	// Trust the fresh answers only if the shard verifiably kept its records:
	// the marker read after the SETs is the one last verified, and no
	// connection met a server this process had not seen before.
	if st != nil && marker.Val() == st.marker && sh.r.ids.Epoch() == st.idEpoch {
		return
	}
	sh.state.Store(nil)
	if verr := sh.verify(ctx); verr != nil {
		for _, c := range batch {
			c.untrusted = verr
		}
	}
}

// release wakes the callers of a sent batch with their answers, and hands
// the next batch to the first call queued meanwhile, or marks the shard idle.
func (sh *redisShard) release(batch []*replayCall, own *replayCall) {
	for _, c := range batch {
		if c != own {
			c.turn <- false
		}
	}
	sh.mu.Lock()
	for len(sh.queue) > 0 {
		next := sh.queue[0]
		if next.state.CompareAndSwap(callWaiting, callHanded) {
			sh.mu.Unlock()
			next.turn <- true
			return
		}
		sh.queue = append(sh.queue[:0], sh.queue[1:]...) // abandoned: its caller left
	}
	sh.sending = false
	sh.mu.Unlock()
}

// batchContext is the context a batch is sent under: the sender's own for a
// batch of one (its cancellation ends the call, as without batching), and
// for a batch of several the sender's values without its cancellation: the
// other callers' requests must not fail because the sender's went away.
func batchContext(ctx context.Context, n int) context.Context {
	if n == 1 {
		return ctx
	}
	return context.WithoutCancel(ctx)
}
