package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"golang.org/x/sys/unix"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
)

// Bounds of one verify-floor measurement.
const (
	floorRounds    = 3
	floorRoundTime = 100 * time.Millisecond
	floorMaxIters  = 100_000

	// The floor under load: a batch of floorLoadBatch verifications every
	// floorLoadGap (about 5 % of one CPU for ES256) beside a gateway run.
	floorLoadBatch = 10
	floorLoadGap   = 25 * time.Millisecond
)

// floorProof is a proof ready for the verify floor: what jws verifies.
type floorProof struct {
	alg   string
	input []byte // base64url(header) "." base64url(payload)
	sig   []byte
	pub   any // *ecdsa.PublicKey or *rsa.PublicKey
	v     jws.Verifier
}

// newFloorProof signs one proof with a fresh key of alg and checks that it
// verifies.
func newFloorProof(alg string) (*floorProof, error) {
	key, err := dpopclient.NewKey(alg)
	if err != nil {
		return nil, err
	}
	proof, err := key.Proof("GET", publicOrigin+benchPath, "", dpopclient.ProofOptions{})
	if err != nil {
		return nil, err
	}
	dot := strings.LastIndexByte(proof, '.')
	p := &floorProof{alg: alg, input: []byte(proof[:dot])}
	if p.sig, err = base64.RawURLEncoding.DecodeString(proof[dot+1:]); err != nil {
		return nil, err
	}
	if err := key.PublicJWK().Raw(&p.pub); err != nil {
		return nil, err
	}
	if p.v, err = jws.NewVerifier(jwa.SignatureAlgorithm(alg)); err != nil {
		return nil, err
	}
	if err := p.v.Verify(p.input, p.sig, p.pub); err != nil {
		return nil, fmt.Errorf("verify floor %s: the proof does not verify: %w", alg, err)
	}
	return p, nil
}

// measure returns the cost in µs of one signature verification of the
// proof: jwx's jws.NewVerifier(alg).Verify on its signing input, signature
// and raw public key, the cryptographic core of what the gateway does per
// request (the SHA-256 of the signing input included). It runs on one
// goroutine, while the gateway is idle: floorRounds rounds of about
// floorRoundTime each; it returns the median round.
func (p *floorProof) measure() (float64, error) {
	input, sig, pub, v := p.input, p.sig, p.pub, p.v

	// Size a round from a short probe.
	const probe = 50
	t0 := time.Now()
	for range probe {
		_ = v.Verify(input, sig, pub)
	}
	per := time.Since(t0) / probe
	iters := min(max(int(floorRoundTime/max(per, 1)), probe), floorMaxIters)

	rounds := make([]float64, floorRounds)
	for r := range rounds {
		t0 := time.Now()
		for range iters {
			if err := v.Verify(input, sig, pub); err != nil {
				return 0, err
			}
		}
		rounds[r] = float64(time.Since(t0).Nanoseconds()) / 1e3 / float64(iters)
	}
	return median(rounds), nil
}

// measureUnderLoad returns the cost in µs of one verification of the proof
// while the machine is busy (the caller runs load on the gateway meanwhile):
// batches of floorLoadBatch verifications, one every floorLoadGap until done
// is closed, each timed by the CPU time of the OS thread it runs on, so
// that time spent waiting for a CPU does not count but everything that
// makes a verification slower on a loaded machine does. It returns the
// median batch.
func (p *floorProof) measureUnderLoad(done <-chan struct{}) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var per []float64
	for {
		select {
		case <-done:
			if len(per) == 0 {
				return 0, errors.New("verify floor under load: the run ended before a batch was measured")
			}
			return median(per), nil
		case <-time.After(floorLoadGap):
		}
		t0, err := threadCPU()
		if err != nil {
			return 0, err
		}
		for range floorLoadBatch {
			if err := p.v.Verify(p.input, p.sig, p.pub); err != nil {
				return 0, err
			}
		}
		t1, err := threadCPU()
		if err != nil {
			return 0, err
		}
		per = append(per, float64((t1-t0).Nanoseconds())/1e3/floorLoadBatch)
	}
}

// threadCPU is the CPU time the calling OS thread has used, from
// CLOCK_THREAD_CPUTIME_ID (the scheduler's own count, to the nanosecond;
// getrusage(RUSAGE_THREAD) moves in whole ticks here, too coarse for a batch
// of a millisecond).
func threadCPU() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime(CLOCK_THREAD_CPUTIME_ID): %w", err)
	}
	return time.Duration(ts.Nano()), nil
}
