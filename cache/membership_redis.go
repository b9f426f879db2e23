package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/authz"
)

// The membership keys under the prefix, each with a TTL. Entries live under a
// generation, a counter that a wildcard invalidation increments: Redis
// Cluster offers no way to delete "every key of a service" (no KEYS, no
// multi-slot DEL), so such an invalidation moves every replica to a new
// generation instead, and the old entries expire by their own TTL.
//
//	<prefix>v1:membership:gen                     the generation (INCR), PX MembershipGenerationTTL (30 days) or more
//	<prefix>v1:membership:<gen>:<service>:<org>   {"record":…,"fetched_at":…}, PX max(TTL, StaleFor)
//	<prefix>v1:membership:invalidate              the pub/sub channel
//
// Every key has a TTL. The generation's is set to MembershipGenerationTTL
// with its INCR (one MULTI on one key) and refreshed by a PEXPIRE pipelined
// with every entry written under it (a pipeline of single-key commands, not
// a MULTI: valid on Redis Cluster whatever the slots), to the longer of
// MembershipGenerationTTL and the entry's TTL. Entries are kept for minutes
// to hours, far less than MembershipGenerationTTL, so the generation
// outlives every entry of its generation and of those before it: it expires
// only after no replica has written an entry for that long, and then reads
// as generation 0 again, with no entry of any generation left to find. A
// replica that wrote under a generation Redis no longer holds (its PEXPIRE
// answers 0) deletes that entry and reads the generation again.
const membershipSpace = "v1:membership:"

// MembershipGenerationTTL is the least TTL of the membership generation key,
// set when it is incremented and refreshed whenever an entry is written under
// it.
const MembershipGenerationTTL = 30 * 24 * time.Hour

// redisEntry is the Redis value of one entry.
type redisEntry struct {
	Record    *authz.Authorization `json:"record"`
	FetchedAt time.Time            `json:"fetched_at"`
}

// redisTier is the Redis tier: every call goes through the breaker with its
// own timeout, and the generation is kept in memory once read.
type redisTier struct {
	client  redis.UniversalClient
	prefix  string
	breaker *Breaker
	timeout time.Duration

	mu       sync.Mutex
	gen      int64
	genKnown bool
	genSeq   uint64 // counts forgetGen and setGen: a read begun before one is not kept
}

func newRedisTier(client redis.UniversalClient, prefix string, br *Breaker, timeout time.Duration) *redisTier {
	return &redisTier{client: client, prefix: prefix, breaker: br, timeout: timeout}
}

// do runs fn through the breaker with the tier's timeout.
func (r *redisTier) do(ctx context.Context, fn func(context.Context) error) error {
	return r.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		return fn(ctx)
	})
}

// generation returns the current generation, read from Redis the first time
// and after every forgetGen.
func (r *redisTier) generation(ctx context.Context) (int64, error) {
	r.mu.Lock()
	gen, known, seq := r.gen, r.genKnown, r.genSeq
	r.mu.Unlock()
	if known {
		return gen, nil
	}
	err := r.do(ctx, func(ctx context.Context) error {
		var err error
		gen, err = readGeneration(ctx, r.client, r.prefix)
		return err
	})
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	if r.genSeq == seq { // no invalidation since we began: gen is current
		r.gen, r.genKnown = gen, true
	}
	r.mu.Unlock()
	return gen, nil
}

// forgetGen makes the next lookup read the generation again.
func (r *redisTier) forgetGen() {
	r.mu.Lock()
	r.genKnown = false
	r.genSeq++
	r.mu.Unlock()
}

// setGen records gen, the answer of our own INCR.
func (r *redisTier) setGen(gen int64) {
	r.mu.Lock()
	r.gen, r.genKnown = gen, true
	r.genSeq++
	r.mu.Unlock()
}

// get returns the entry of k, whether there is one, and an error when Redis
// did not answer or holds a value that does not parse.
func (r *redisTier) get(ctx context.Context, k tierKey) (authz.Answer, bool, error) {
	gen, err := r.generation(ctx)
	if err != nil {
		return authz.Answer{}, false, err
	}
	var raw []byte
	err = r.do(ctx, func(ctx context.Context) error {
		var err error
		raw, err = r.client.Get(ctx, membershipKey(r.prefix, gen, k)).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil // a miss is an answer, not a failure of Redis
		}
		return err
	})
	if err != nil || raw == nil {
		return authz.Answer{}, false, err
	}
	var w redisEntry
	if err := json.Unmarshal(raw, &w); err != nil {
		return authz.Answer{}, false, fmt.Errorf("cache: membership entry in redis does not parse: %w", err)
	}
	if w.FetchedAt.IsZero() {
		return authz.Answer{}, false, errors.New("cache: membership entry in redis has no fetched_at")
	}
	return authz.Answer{Record: w.Record, FetchedAt: w.FetchedAt}, true, nil
}

// set writes ans under k for keep (rounded up to whole milliseconds) with a
// SET … PX, pipelined with a PEXPIRE that refreshes the generation's TTL
// (generation 0 has no key to refresh: it was never incremented).
func (r *redisTier) set(ctx context.Context, k tierKey, ans authz.Answer, keep time.Duration) error {
	gen, err := r.generation(ctx)
	if err != nil {
		return err
	}
	val, err := json.Marshal(redisEntry{Record: ans.Record, FetchedAt: ans.FetchedAt})
	if err != nil {
		return err
	}
	key := membershipKey(r.prefix, gen, k)
	ms := int64((keep + time.Millisecond - 1) / time.Millisecond)
	return r.do(ctx, func(ctx context.Context) error {
		// Two keys in two slots: a plain pipeline, not MULTI, which
		// Redis Cluster refuses across slots.
		pipe := r.client.Pipeline()
		// Built by hand: client.Set sends EX, not PX, for whole seconds.
		_ = pipe.Process(ctx, redis.NewStatusCmd(ctx, "set", key, val, "px", ms))
		var refresh *redis.BoolCmd
		if gen > 0 {
			refresh = pipe.PExpire(ctx, generationKey(r.prefix), generationTTL(keep))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		if refresh != nil && !refresh.Val() {
			// The generation expired: once another replica increments it
			// from 0 again, this entry could come back from under the
			// invalidations in between.
			r.forgetGen()
			return r.client.Del(ctx, key).Err()
		}
		return nil
	})
}

// generationKey returns the key of the generation under prefix.
func generationKey(prefix string) string { return prefix + membershipSpace + "gen" }

// generationTTL returns the TTL the generation is given alongside an entry
// kept for keep: MembershipGenerationTTL, or keep if longer.
func generationTTL(keep time.Duration) time.Duration { return max(MembershipGenerationTTL, keep) }

// readGeneration reads the generation; 0 when it was never incremented.
func readGeneration(ctx context.Context, client redis.UniversalClient, prefix string) (int64, error) {
	gen, err := client.Get(ctx, generationKey(prefix)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return gen, err
}

// forgetShared makes Redis forget what the invalidation of (service, org)
// names: DEL of the pair's key in the current generation, or for a wildcard
// ("" for either) INCR of the generation with its TTL renewed in the same
// MULTI (one key, so one slot), returning the new value.
func forgetShared(ctx context.Context, client redis.UniversalClient, prefix, service, org string) (int64, error) {
	if service == "" || org == "" {
		var incr *redis.IntCmd
		_, err := client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			incr = pipe.Incr(ctx, generationKey(prefix))
			pipe.PExpire(ctx, generationKey(prefix), MembershipGenerationTTL)
			return nil
		})
		if err != nil {
			return 0, err
		}
		return incr.Val(), nil
	}
	gen, err := readGeneration(ctx, client, prefix)
	if err != nil {
		return 0, err
	}
	return gen, client.Del(ctx, membershipKey(prefix, gen, tierKey{service: service, org: org})).Err()
}

// membershipKey returns the Redis key of k in generation gen.
func membershipKey(prefix string, gen int64, k tierKey) string {
	return prefix + membershipSpace + strconv.FormatInt(gen, 10) + ":" + keyPart(k.service) + ":" + keyPart(k.org)
}

// keyPart percent-encodes every byte of s outside [A-Za-z0-9._-], so that a
// ':' in a service name cannot move an entry into another's key.
func keyPart(s string) string {
	safe := func(b byte) bool {
		return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '.' || b == '_' || b == '-'
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !safe(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		if b := s[i]; safe(b) {
			out = append(out, b)
		} else {
			out = append(out, '%', hex[b>>4], hex[b&15])
		}
	}
	return string(out)
}
