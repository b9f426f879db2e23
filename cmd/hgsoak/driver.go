package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
)

// record is one request and its answer.
type record struct {
	id      int64
	kind    kind
	route   string
	replica int
	path    string
	phase   string
	sent    time.Time
	done    time.Time
	status  int    // 0: no HTTP answer
	code    string // the problem body's error, or the transport error
	reason  string // the audit log's reason (filled in after the run)
	// Replays: the original request.
	origID      int64
	origReplica int
	origSent    time.Time
}

// accepted is a proof that got a 200, kept for replays.
type accepted struct {
	id            int64
	route         string
	replica       int
	path          string
	token, proof  string
	sent          time.Time
	replayedOther atomic.Bool
	replayedSame  atomic.Bool
}

// replayMaxAge is the age up to which an accepted proof is replayed: well
// inside dpop_max_age (15 s), so that a replay is refused by the replay
// store, not by the iat check.
const replayMaxAge = 10 * time.Second

// driver sends the request mix at a bounded rate and keeps every record.
type driver struct {
	ids      *identities
	replicas []*replica
	phase    func() string
	hc       *http.Client
	start    time.Time

	nextID  atomic.Int64
	skipped atomic.Int64 // ticks dropped because the concurrency limit was reached

	mu      sync.Mutex
	records []*record
	pool    map[string][]*accepted // route -> recent accepted proofs, newest last
}

// weights of the request mix, in allKinds order (percent).
var mixWeights = map[kind]int{
	kindValid: 55, kindReplayOther: 12, kindReplaySame: 8, kindNonMember: 10,
	kindBadSig: 5, kindBadHTU: 5, kindExpired: 5,
}

// pickKind draws a kind by mixWeights.
func pickKind() kind {
	n := rand.IntN(100)
	for _, k := range allKinds {
		if n < mixWeights[k] {
			return k
		}
		n -= mixWeights[k]
	}
	return kindValid
}

// run sends requests at rate per second, at most conc at a time, until ctx
// ends. A tick that finds conc requests out is dropped and counted: the
// rate is an upper bound, and a stalled gateway does not pile up goroutines.
func (d *driver) run(ctx context.Context, rate, conc int) {
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	t := time.NewTicker(time.Second / time.Duration(rate))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			d.skipped.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d.one(ctx)
		}()
	}
}

// one sends one request of a random kind, to a random replica and route.
func (d *driver) one(ctx context.Context) {
	k := pickKind()
	route := []string{routeDeny, routeLocal}[rand.IntN(2)]
	rep := rand.IntN(len(d.replicas))
	rec := &record{id: d.nextID.Add(1), kind: k, route: route, replica: rep}
	var token, proof string
	var orig *accepted
	var err error
	if k.isReplay() {
		if orig = d.pickReplay(route, k); orig == nil {
			k, rec.kind = kindValid, kindValid // nothing recent to replay yet
		} else {
			rec.origID, rec.origReplica, rec.origSent = orig.id, orig.replica, orig.sent
			rec.path, token, proof = orig.path, orig.token, orig.proof
			rec.replica = orig.replica
			if k == kindReplayOther {
				rec.replica = 1 - orig.replica
			}
		}
	}
	if orig == nil {
		rec.path = fmt.Sprintf("/kj/%s/%d", k, rec.id)
		token, proof, err = d.credentials(k, route, rec.path)
		if err != nil {
			rec.sent, rec.done, rec.code = time.Now(), time.Now(), "client: "+err.Error()
			d.keep(rec)
			return
		}
	}
	rec.phase = d.phase()
	rec.sent = time.Now()
	rec.status, rec.code = d.send(ctx, "http://"+d.replicas[rec.replica].sites[route]+rec.path, token, proof)
	rec.done = time.Now()
	if ctx.Err() != nil && rec.status == 0 {
		return // the run ended under it: not an answer
	}
	d.keep(rec)
	if k == kindValid && rec.status == http.StatusOK {
		d.remember(&accepted{id: rec.id, route: route, replica: rec.replica, path: rec.path, token: token, proof: proof, sent: rec.sent})
	}
}

// credentials builds the token and proof of a request of kind k.
func (d *driver) credentials(k kind, route, path string) (token, proof string, err error) {
	htu := routeOrigin(route) + path
	var c *client
	switch k {
	case kindNonMember:
		c = d.ids.pick(false)
	case kindExpired:
		c = d.ids.expired
	default:
		c = d.ids.pick(true)
	}
	if k == kindExpired {
		token, err = d.ids.expiredToken()
	} else {
		token, err = d.ids.validToken(c)
	}
	if err != nil {
		return "", "", err
	}
	if k == kindBadHTU {
		htu = routeOrigin(route) + "/kj/elsewhere"
	}
	proof, err = c.key.Proof(http.MethodGet, htu, token, dpopclient.ProofOptions{})
	if err != nil {
		return "", "", err
	}
	if k == kindBadSig {
		proof = corruptSignature(proof)
	}
	return token, proof, nil
}

// corruptSignature changes one character in the middle of a JWS's
// signature (not the last, whose low bits may be padding).
func corruptSignature(jws string) string {
	i := strings.LastIndexByte(jws, '.') + 10
	b := []byte(jws)
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// send sends one GET and returns the status and the problem body's error
// code (or the transport error, with status 0).
func (d *driver) send(ctx context.Context, url, token, proof string) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "DPoP "+token)
	req.Header.Set("DPoP", proof)
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, shortErr(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	var p struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &p)
	return resp.StatusCode, p.Error
}

// shortErr keeps the end of a transport error ("connection refused",
// "context deadline exceeded").
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// keep stores a record.
func (d *driver) keep(r *record) {
	d.mu.Lock()
	d.records = append(d.records, r)
	d.mu.Unlock()
}

// remember adds an accepted proof to its route's pool (the last 512).
func (d *driver) remember(a *accepted) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := append(d.pool[a.route], a)
	if len(p) > 512 {
		p = p[len(p)-512:]
	}
	d.pool[a.route] = p
}

// pickReplay returns a proof accepted on route less than replayMaxAge ago
// and not yet replayed this way (each proof is replayed at most once to
// each replica), or nil.
func (d *driver) pickReplay(route string, k kind) *accepted {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pool[route]
	for i := len(p) - 1; i >= 0 && time.Since(p[i].sent) < replayMaxAge; i-- {
		flag := &p[i].replayedOther
		if k == kindReplaySame {
			flag = &p[i].replayedSame
		}
		// Skip some at random, so replays are not always of the newest proof.
		if rand.IntN(3) == 0 && i > 0 {
			continue
		}
		if flag.CompareAndSwap(false, true) {
			return p[i]
		}
	}
	return nil
}

// snapshot returns the records so far.
func (d *driver) snapshot() []*record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*record(nil), d.records...)
}
