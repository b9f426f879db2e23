package integration

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/helsegate/helsegate/cache"
)

// The test Redis: its address, a client and a key prefix per test.

func redisAddr() string {
	if a := os.Getenv("HELSEGATE_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// needRedis returns a client of the test Redis and a key prefix unique to
// this test, whose keys are deleted at the end. It fails the test when
// Redis does not answer.
func needRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: redisAddr()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rc.Ping(ctx).Err(); err != nil {
		rc.Close()
		t.Fatalf("Redis at %s (HELSEGATE_TEST_REDIS) does not answer: %v", redisAddr(), err)
	}
	prefix := "hg-test-" + randHex(6) + ":"
	// The replay store's epoch marker, as a store in service long before
	// the test would hold it: a key prefix used for the first time is
	// otherwise a store that may have lost its records, and refuses proofs
	// for one skew (the fault tests show that).
	if err := cache.SeedEpochMarker(ctx, rc, prefix, time.Hour); err != nil {
		rc.Close()
		t.Fatalf("seeding the epoch marker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, _ := redisKeys(ctx, rc, prefix+"*")
		if len(keys) > 0 {
			rc.Del(ctx, keys...)
		}
		rc.Close()
	})
	return rc, prefix
}

func redisKeys(ctx context.Context, rc *redis.Client, pattern string) ([]string, error) {
	var keys []string
	iter := rc.Scan(ctx, 0, pattern, 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	return keys, iter.Err()
}
