// Package integration holds helsegate's end-to-end tests: the real binary
// (built once by TestMain from ./cmd/helsegate), real Redis
// (HELSEGATE_TEST_REDIS, default 127.0.0.1:6379), the test doubles of
// internal/devkit (the HelseID simulator helseidsim, the membership registry
// simulator registrysim, the DPoP client dpopclient) and a recording upstream.
// Everything listens on loopback only.
//
// Run with: go test -count=1 ./integration/
package integration
