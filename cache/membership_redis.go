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

// The membership keys under the prefix (SPEC §7). Entries live under a
// generation, a counter that a wildcard invalidation increments: Redis
// Cluster offers no way to delete "every key of a service" (no KEYS, no
// multi-slot DEL), so such an invalidation moves every replica to a new
// generation instead, and the old entries expire by their own TTL.
//
//	<prefix>v1:membership:gen                     the generation (INCR)
//	<prefix>v1:membership:<gen>:<service>:<org>   {"record":…,"fetched_at":…}, PX max(TTL, StaleFor)
//	<prefix>v1:membership:invalidate              the pub/sub channel
const membershipSpace = "v1:membership:"

// memWire is the Redis value of one entry.
type memWire struct {
	Record    *authz.Authorization `json:"record"`
	FetchedAt time.Time            `json:"fetched_at"`
}

// memRedis is the Redis tier: every call goes through the breaker with its
// own timeout, and the generation is kept in memory once read.
type memRedis struct {
	client  redis.UniversalClient
	prefix  string
	breaker *Breaker
	timeout time.Duration

	mu       sync.Mutex
	gen      int64
	genKnown bool
	genSeq   uint64 // counts forgetGen and setGen: a read begun before one is not kept
}

func newMemRedis(client redis.UniversalClient, prefix string, br *Breaker, timeout time.Duration) *memRedis {
	return &memRedis{client: client, prefix: prefix, breaker: br, timeout: timeout}
}

// do runs fn through the breaker with the tier's timeout.
func (r *memRedis) do(ctx context.Context, fn func(context.Context) error) error {
	return r.breaker.Do(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		return fn(ctx)
	})
}

// generation returns the current generation, read from Redis the first time
// and after every forgetGen.
func (r *memRedis) generation(ctx context.Context) (int64, error) {
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
func (r *memRedis) forgetGen() {
	r.mu.Lock()
	r.genKnown = false
	r.genSeq++
	r.mu.Unlock()
}

// setGen records gen, the answer of our own INCR.
func (r *memRedis) setGen(gen int64) {
	r.mu.Lock()
	r.gen, r.genKnown = gen, true
	r.genSeq++
	r.mu.Unlock()
}

// get returns the entry of k, whether there is one, and an error when Redis
// did not answer or holds a value that does not parse.
func (r *memRedis) get(ctx context.Context, k memKey) (authz.Answer, bool, error) {
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
	var w memWire
	if err := json.Unmarshal(raw, &w); err != nil {
		return authz.Answer{}, false, fmt.Errorf("cache: membership entry in redis does not parse: %w", err)
	}
	if w.FetchedAt.IsZero() {
		return authz.Answer{}, false, errors.New("cache: membership entry in redis has no fetched_at")
	}
	return authz.Answer{Record: w.Record, FetchedAt: w.FetchedAt}, true, nil
}

// set writes ans under k for keep (rounded up to whole milliseconds) with a
// single SET … PX.
func (r *memRedis) set(ctx context.Context, k memKey, ans authz.Answer, keep time.Duration) error {
	gen, err := r.generation(ctx)
	if err != nil {
		return err
	}
	val, err := json.Marshal(memWire{Record: ans.Record, FetchedAt: ans.FetchedAt})
	if err != nil {
		return err
	}
	ms := int64((keep + time.Millisecond - 1) / time.Millisecond)
	return r.do(ctx, func(ctx context.Context) error {
		// Built by hand: client.Set sends EX, not PX, for whole seconds.
		return r.client.Process(ctx, redis.NewStatusCmd(ctx, "set", membershipKey(r.prefix, gen, k), val, "px", ms))
	})
}

// readGeneration reads the generation; 0 when it was never incremented.
func readGeneration(ctx context.Context, client redis.UniversalClient, prefix string) (int64, error) {
	gen, err := client.Get(ctx, prefix+membershipSpace+"gen").Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return gen, err
}

// forgetShared makes Redis forget what the invalidation of (service, org)
// names: DEL of the pair's key in the current generation, or for a wildcard
// ("" for either) INCR of the generation, whose new value it returns.
func forgetShared(ctx context.Context, client redis.UniversalClient, prefix, service, org string) (int64, error) {
	if service == "" || org == "" {
		return client.Incr(ctx, prefix+membershipSpace+"gen").Result()
	}
	gen, err := readGeneration(ctx, client, prefix)
	if err != nil {
		return 0, err
	}
	return gen, client.Del(ctx, membershipKey(prefix, gen, memKey{service: service, org: org})).Err()
}

// membershipKey returns the Redis key of k in generation gen.
func membershipKey(prefix string, gen int64, k memKey) string {
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
