package caddymodule

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/helsegate/helsegate/cache"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// Synthetic identities (HelseID's public test values): they must never
// appear where the test says so.
const (
	testPID       = "17056600574"
	testHPR       = "431001110"
	testOrg       = "917897468"
	testOrgChild  = "922734046"
	testOtherOrg  = "974600951" // valid, not in the membership file
	testService   = "kjernejournal"
	testAuditName = "http.handlers.helseid.audit"
)

// membershipFile writes a membership file that authorizes testOrg for
// testService and returns its path.
func membershipFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "members.json")
	doc := fmt.Sprintf(`{"authorizations":[{"organization":%q,"service":%q,"member":true,"status":"active","valid_to":null}]}`, testOrg, testService)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// withMembership is a fixture option: the route checks membership against
// a file.
func withMembership(t *testing.T) func(*Handler) {
	path := membershipFile(t)
	return func(h *Handler) { h.Membership = &MembershipConfig{Service: testService, File: path} }
}

// observe replaces the handler's loggers with observers: the audit logger
// (named as in Caddy) and the handler's own.
func observe(h *Handler) (audit, other *observer.ObservedLogs) {
	ac, audit := observer.New(zapcore.DebugLevel)
	oc, other := observer.New(zapcore.DebugLevel)
	h.audit = zap.New(ac).Named(testAuditName)
	h.logger = zap.New(oc).Named("http.handlers.helseid")
	return audit, other
}

func userToken(t *testing.T, f *handlerFixture, mod func(*helseidsim.TokenSpec)) string {
	t.Helper()
	spec := helseidsim.TokenSpec{OrgParent: testOrg, OrgChild: testOrgChild, PID: testPID, SecurityLevel: "4", HPRNumber: testHPR}
	if mod != nil {
		mod(&spec)
	}
	return f.token(t, spec)
}

// deadAddr returns a loopback address nothing listens on.
// testRedisAddr is the Redis of the tests (HELSEGATE_TEST_REDIS, or the
// default port on loopback).
func testRedisAddr() string {
	if a := os.Getenv("HELSEGATE_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// seededPrefix returns a key prefix of its own under which the test Redis
// holds the replay store's epoch marker, as a store in service long before
// the test: a prefix used for the first time is otherwise a store that may
// have lost its records, and refuses proofs for one skew.
func seededPrefix(tb testing.TB, base string) string {
	tb.Helper()
	prefix := base + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	rc := redis.NewClient(&redis.Options{Addr: testRedisAddr()})
	defer rc.Close()
	if err := cache.SeedEpochMarker(context.Background(), rc, prefix, time.Hour); err != nil {
		tb.Fatalf("seeding the epoch marker: %v", err)
	}
	return prefix
}

func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
