package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// bearerName is the table name of the Bearer configuration.
const bearerName = "bearer (dpop optional, reused token)"

// tokenLifetime outlives any run of the benchmark.
const tokenLifetime = time.Hour

// scenario is one configuration of the table: a client with its proof key
// and its one access token (so the gateway verifies the token's signature
// once and then hits its verified-token cache), and the gateway site it
// calls. The Bearer scenario has no key: an unbound token, sent as Bearer
// to the dpop optional site.
type scenario struct {
	name   string
	alg    string // proof algorithm; "" for Bearer
	site   string // host:port of its gateway site
	prefix string // that site's Redis key_prefix
	key    *dpopclient.Key
	token  string
	// profiled: -cpuprofile profiles this configuration (the first of -configs).
	profiled bool
}

// newScenario makes the client key (if alg is set) and mints its token.
func newScenario(sim *helseidsim.Server, name, alg, site, prefix string) (*scenario, error) {
	s := &scenario{name: name, alg: alg, site: site, prefix: prefix}
	spec := helseidsim.TokenSpec{OrgParent: memberOrg, Lifetime: tokenLifetime}
	if alg != "" {
		k, err := dpopclient.NewKey(alg)
		if err != nil {
			return nil, err
		}
		s.key = k
		spec.JKT = k.Thumbprint()
	}
	tok, err := sim.Mint(spec)
	if err != nil {
		return nil, err
	}
	s.token = tok
	return s, nil
}

// requests returns n requests, each with a fresh proof, signed on every
// core before the timed part of a run. The Bearer scenario has a single
// request, reused n times.
func (s *scenario) requests(ctx context.Context, n int) ([][]byte, error) {
	if s.key == nil {
		return [][]byte{buildRequest("Bearer "+s.token, "")}, nil
	}
	out := make([][]byte, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				proof, err := s.key.Proof("GET", publicOrigin+benchPath, s.token, dpopclient.ProofOptions{})
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				out[i] = buildRequest("DPoP "+s.token, proof)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("%s: signing proofs: %w", s.name, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// buildRequest renders one HTTP/1.1 GET of benchPath. The Host is the
// public name, as a TLS terminator in front of the gateway would pass it.
func buildRequest(authorization, proof string) []byte {
	b := make([]byte, 0, 256+len(authorization)+len(proof))
	b = append(b, "GET "+benchPath+" HTTP/1.1\r\nHost: "+publicOrigin[len("https://"):]+
		"\r\nUser-Agent: hgbench\r\nAccept: application/fhir+json\r\nAuthorization: "...)
	b = append(b, authorization...)
	if proof != "" {
		b = append(b, "\r\nDPoP: "...)
		b = append(b, proof...)
	}
	return append(b, "\r\n\r\n"...)
}
