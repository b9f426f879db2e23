package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
	"github.com/helsegate/helsegate/internal/redistopo"
)

// The replay store under Redis faults, with real topologies: a single Redis
// restarted without persistence, a Sentinel set whose master is killed, a
// Cluster with a master killed. Two gateway processes share the Redis, each
// with a deny route and a local route (their own key prefixes), while a
// driver sends fresh proofs to both and replays accepted proofs to the other
// replica and to the same one. The tests assert that no replay is accepted
// under deny, that under local only a proof first used during the outage is
// (a replica knew nothing of it then), that fresh proofs are accepted again
// soon after Redis recovers, and, after a failover, that an invalidation
// reaches both replicas.

// faultSkew is the routes' dpop_future_skew. After Redis lost records a proof
// issued before the loss plus this skew is refused; a short skew keeps the
// tests short (the default, 5 s, is what the docs measure with).
const faultSkew = "500ms"

// faultRig is two gateways sharing a Redis topology.
type faultRig struct {
	gws    [2]*gateway
	caller *caller
	token  string
	up     *upstream
	reg    *registrysim.Server
	member string // an organization for the invalidation check
}

// startFaultRig starts the two gateways on redisLines (the redis
// subdirective without key_prefix, e.g. "redis redis://host:port").
func startFaultRig(t *testing.T, redisConf func(prefix string) string) *faultRig {
	t.Helper()
	rig := &faultRig{up: newUpstream(t), member: newOrg(t)}
	rig.reg = startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(orgParent), active(rig.member)}})
	iss := sharedSim.Issuer()
	run := randHex(4)
	site := func(addrs []string) string {
		deny := helseid(iss, "public_origin http://gateway.test", "dpop_future_skew "+faultSkew, "on_store_error deny",
			redisConf("hg-fault-"+run+"-deny:"), membershipBlock("registry "+rig.reg.URL(), "cache_ttl 10m")) +
			"reverse_proxy " + rig.up.URL() + "\n"
		local := helseid(iss, "public_origin http://gateway.test", "dpop_future_skew "+faultSkew, "on_store_error local",
			redisConf("hg-fault-"+run+"-local:")) + "reverse_proxy " + rig.up.URL() + "\n"
		return fmt.Sprintf("http://%s {\n\thandle /deny/* {\n%s\t}\n\thandle /local/* {\n%s\t}\n}\n",
			addrs[0], indent(indent(deny)), indent(indent(local)))
	}
	for i := range rig.gws {
		rig.gws[i] = startGateway(t, 1, site)
	}
	rig.caller = newCaller(t, sharedSim)
	rig.token = rig.caller.token(t, helseidsim.TokenSpec{})
	// A Redis that started moments ago may have lost records before: the
	// first proofs are refused until its start plus the skew.
	for i, g := range rig.gws {
		for _, route := range []string{"/deny/", "/local/"} {
			waitAccepted(t, g, func() reply { return rig.do(t, i, route+"warm", "") })
		}
	}
	return rig
}

// do sends GET path to replica i with a fresh proof for the public origin,
// with the rig's token, or with a fresh token for org when org is set.
func (rig *faultRig) do(t *testing.T, i int, path, org string) reply {
	t.Helper()
	tok := rig.token
	if org != "" {
		tok = rig.caller.token(t, helseidsim.TokenSpec{OrgParent: org})
	}
	proof := rig.caller.proof(t, "GET", "http://gateway.test"+path, tok, dpopclient.ProofOptions{})
	return send(t, "GET", rig.gws[i].url(0, path), dpopHeaders(tok, proof))
}

// attempt is one request of the driver.
type attempt struct {
	at      time.Time
	replica int
	route   string // "deny" or "local"
	status  int
	code    string // the problem's error, "" for a 200
	proof   string
	replay  bool      // a proof sent before
	firstOK time.Time // for a replay: when the proof was first accepted
}

// driver sends proofs to both gateways until stopped: each tick a fresh
// proof to one replica and route, and a replay of a proof accepted earlier
// to the other replica (every third to the same one).
type driver struct {
	rig  *faultRig
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	attempts []attempt
	accepted []attempt // fresh proofs answered 200, oldest first
}

// startDriver starts sending, about 25 requests a second.
func (rig *faultRig) startDriver(t *testing.T) *driver {
	d := &driver{rig: rig, stop: make(chan struct{}), done: make(chan struct{})}
	go d.run()
	t.Cleanup(d.halt)
	return d
}

func (d *driver) halt() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	<-d.done
}

func (d *driver) run() {
	defer close(d.done)
	tick := time.NewTicker(80 * time.Millisecond)
	defer tick.Stop()
	for n := 0; n < 2000; n++ { // bounded: 160 s at most
		select {
		case <-d.stop:
			return
		case <-tick.C:
		}
		replica, route := n%2, []string{"deny", "local"}[(n/2)%2]
		d.fresh(replica, route)
		d.replayOne(n)
	}
}

// fresh sends a new proof.
func (d *driver) fresh(replica int, route string) {
	htu := "http://gateway.test/" + route + "/r"
	proof, err := d.rig.caller.key.Proof("GET", htu, d.rig.token, dpopclient.ProofOptions{})
	if err != nil {
		return
	}
	a := d.send(replica, route, proof)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.attempts = append(d.attempts, a)
	if a.status == http.StatusOK {
		d.accepted = append(d.accepted, a)
	}
}

// replayOne replays an accepted proof still inside the acceptance window.
func (d *driver) replayOne(n int) {
	d.mu.Lock()
	var pick *attempt
	for i := len(d.accepted) - 1 - n%5; i >= 0; i-- {
		if time.Since(d.accepted[i].at) < 12*time.Second {
			pick = &d.accepted[i]
			break
		}
	}
	var orig attempt
	if pick != nil {
		orig = *pick
	}
	d.mu.Unlock()
	if pick == nil {
		return
	}
	replica := 1 - orig.replica
	if n%3 == 0 {
		replica = orig.replica
	}
	a := d.send(replica, orig.route, orig.proof)
	a.replay, a.firstOK = true, orig.at
	d.mu.Lock()
	d.attempts = append(d.attempts, a)
	d.mu.Unlock()
}

// send sends one proof; it is safe off the test goroutine.
func (d *driver) send(replica int, route, proof string) attempt {
	a := attempt{at: time.Now(), replica: replica, route: route, proof: proof}
	req, _ := http.NewRequest("GET", d.rig.gws[replica].url(0, "/"+route+"/r"), nil)
	req.Header.Set("Authorization", "DPoP "+d.rig.token)
	req.Header.Set("DPoP", proof)
	resp, err := httpClient.Do(req)
	if err != nil {
		a.code = "transport: " + err.Error()
		return a
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	a.status = resp.StatusCode
	if a.status != http.StatusOK {
		var p struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &p)
		a.code = p.Error
	}
	return a
}

// snapshot returns the attempts so far.
func (d *driver) snapshot() []attempt {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]attempt(nil), d.attempts...)
}

// window is the span of an outage, for the local route's allowance.
type window struct{ from, to time.Time }

// checkReplays fails the test for every replay answered 200, except on the
// local route a proof first accepted inside outage (its replica then knew
// nothing the others did, by design). It returns the replays sent.
func checkReplays(t *testing.T, attempts []attempt, outage window) int {
	t.Helper()
	replays, allowed := 0, 0
	for _, a := range attempts {
		if !a.replay {
			continue
		}
		replays++
		if a.status != http.StatusOK {
			continue
		}
		if a.route == "local" && !a.firstOK.Before(outage.from) && !a.firstOK.After(outage.to) {
			allowed++
			continue
		}
		t.Errorf("a replay was accepted: route %s, replica %d, at %s; first accepted at %s (outage %s to %s)",
			a.route, a.replica, a.at.Format("15:04:05.000"), a.firstOK.Format("15:04:05.000"),
			outage.from.Format("15:04:05.000"), outage.to.Format("15:04:05.000"))
	}
	t.Logf("%d replays sent, %d accepted on the local route for proofs first used during the outage", replays, allowed)
	return replays
}

// recoveryAfter returns, per replica, how long after back the first fresh
// proof was accepted on route (-1: never).
func recoveryAfter(attempts []attempt, route string, back time.Time) [2]time.Duration {
	rec := [2]time.Duration{-1, -1}
	for _, a := range attempts {
		if a.replay || a.route != route || a.status != http.StatusOK || a.at.Before(back) {
			continue
		}
		if rec[a.replica] < 0 {
			rec[a.replica] = a.at.Sub(back)
		}
	}
	return rec
}

// summarize logs the answers per route and status.
func summarize(t *testing.T, attempts []attempt) {
	t.Helper()
	counts := map[string]int{}
	for _, a := range attempts {
		kind := "fresh"
		if a.replay {
			kind = "replay"
		}
		counts[fmt.Sprintf("%s %s %d %s", a.route, kind, a.status, a.code)]++
	}
	var lines []string
	for k, n := range counts {
		lines = append(lines, fmt.Sprintf("%5d  %s", n, k))
	}
	t.Logf("answers:\n%s", strings.Join(lines, "\n"))
}

// recoveryBound is how soon after Redis answers again (a restart done, a
// replica promoted) each gateway must accept fresh proofs on the deny route:
// the breaker's probe (500 ms), the loss floor (the skew, 500 ms here) and a
// proof's whole-second iat.
const recoveryBound = 3 * time.Second

// checkRecovery fails the test when a replica did not accept a fresh proof
// on the deny route within recoveryBound of back.
func checkRecovery(t *testing.T, attempts []attempt, back time.Time) {
	t.Helper()
	rec := recoveryAfter(attempts, "deny", back)
	t.Logf("fresh proofs accepted again on the deny route %v after Redis answered", rec)
	for i, d := range rec {
		if d < 0 || d > recoveryBound {
			t.Errorf("replica %d: first fresh 200 on the deny route %v after Redis answered, want within %v", i, d, recoveryBound)
		}
	}
}

// preOutageProofs has n proofs accepted on replica 0 on both routes right
// before an outage, to be replayed after it.
func (rig *faultRig) preOutageProofs(t *testing.T, n int) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, route := range []string{"deny", "local"} {
		for range n {
			htu := "http://gateway.test/" + route + "/r"
			// A Cluster shard looked at for the first time refuses proofs
			// issued before then plus the skew: sign another a moment later.
			var proof string
			waitAccepted(t, rig.gws[0], func() reply {
				proof = rig.caller.proof(t, "GET", htu, rig.token, dpopclient.ProofOptions{})
				return send(t, "GET", rig.gws[0].url(0, "/"+route+"/r"), dpopHeaders(rig.token, proof))
			})
			out[route] = append(out[route], proof)
		}
	}
	return out
}

// replayAll sends every proof to both replicas and fails on any 200.
func (rig *faultRig) replayAll(t *testing.T, proofs map[string][]string) {
	t.Helper()
	for route, ps := range proofs {
		for _, p := range ps {
			for i, g := range rig.gws {
				r := send(t, "GET", g.url(0, "/"+route+"/r"), dpopHeaders(rig.token, p))
				if r.status == http.StatusOK {
					t.Errorf("a proof accepted before the outage was accepted again after it, on replica %d, route %s", i, route)
				}
			}
		}
	}
}

// checkInvalidation: with the member cached as a member on both replicas,
// the registry changes its mind and replica 0's admin endpoint publishes an
// invalidation; both replicas must refuse the organization within 2 s.
func (rig *faultRig) cacheMember(t *testing.T) {
	t.Helper()
	for i, g := range rig.gws {
		waitAccepted(t, g, func() reply { return rig.do(t, i, "/deny/member", rig.member) })
	}
}

func (rig *faultRig) checkInvalidation(t *testing.T) {
	t.Helper()
	rig.reg.Set(authz.Authorization{Organization: rig.member, Service: service, Member: false, Status: "active"})
	req, _ := http.NewRequest(http.MethodPost, "http://"+rig.gws[0].admin+"/helseid/membership/invalidate",
		strings.NewReader(fmt.Sprintf(`{"service":%q,"organization":%q}`, service, rig.member)))
	published := time.Now()
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("invalidate: %s %s", resp.Status, body)
	for i := range rig.gws {
		for {
			r := rig.do(t, i, "/deny/member", rig.member)
			if r.status == http.StatusForbidden {
				t.Logf("replica %d refuses the invalidated member %v after the publish", i, time.Since(published))
				break
			}
			if time.Since(published) > 2*time.Second {
				t.Errorf("replica %d still answers %d for the invalidated member 2 s after the publish", i, r.status)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// waitTraffic waits until the driver has had n fresh proofs accepted by
// each replica.
func (rig *faultRig) waitTraffic(t *testing.T, d *driver, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ok [2]int
		for _, a := range d.snapshot() {
			if !a.replay && a.status == http.StatusOK {
				ok[a.replica]++
			}
		}
		if ok[0] >= n && ok[1] >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver had %v fresh proofs accepted in 30 s, want %d on each replica", ok, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runOutage drives load across fault (which kills and brings back Redis and
// returns when it answers again), then checks replays and recovery.
func (rig *faultRig) runOutage(t *testing.T, fault func() (killed, back time.Time)) (attempts []attempt, killed, back time.Time) {
	t.Helper()
	pre := rig.preOutageProofs(t, 5)
	d := rig.startDriver(t)
	rig.waitTraffic(t, d, 8) // some traffic on the healthy store, on both replicas
	killed, back = fault()
	t.Logf("redis down at %s, answering again at %s (%v)", killed.Format("15:04:05.000"), back.Format("15:04:05.000"), back.Sub(killed))
	// Traffic until both replicas accepted fresh proofs for a while again
	// (bounded: the driver stops by itself).
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		rec := recoveryAfter(d.snapshot(), "deny", back)
		if rec[0] >= 0 && rec[1] >= 0 && time.Since(back) > rec[0]+2*time.Second && time.Since(back) > rec[1]+2*time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.halt()
	attempts = d.snapshot()
	summarize(t, attempts)
	checkReplays(t, attempts, window{killed, back.Add(2 * time.Second)})
	checkRecovery(t, attempts, back)
	rig.replayAll(t, pre)
	return attempts, killed, back
}

// losses returns, per replica, how many losses of records it logged with
// one of whys (the store raised its floor).
func (rig *faultRig) losses(whys ...string) [2]int {
	var n [2]int
	for i, g := range rig.gws {
		for _, e := range g.logEntries() {
			if !strings.Contains(fmt.Sprint(e["msg"]), "may have lost records") {
				continue
			}
			for _, w := range whys {
				if e["why"] == w {
					n[i]++
				}
			}
		}
	}
	return n
}

// expectLoss checks that every replica logged more losses of records for
// one of whys than it had logged at before.
func (rig *faultRig) expectLoss(t *testing.T, before [2]int, whys ...string) {
	t.Helper()
	after := rig.losses(whys...)
	for i := range after {
		if after[i] <= before[i] {
			t.Errorf("replica %d logged no loss of records (why %v)", i, whys)
		}
	}
}

func TestFaultSingleRestart(t *testing.T) {
	srv := redistopo.StartSingle(t)
	rig := startFaultRig(t, func(prefix string) string {
		return fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", srv.Addr, prefix)
	})
	rig.runOutage(t, func() (time.Time, time.Time) {
		killed := time.Now()
		srv.Restart() // SIGKILL, then a new empty server on the same port
		return killed, time.Now()
	})
	rig.expectLoss(t, [2]int{}, "restarted", "declared_elsewhere")

	// A FLUSHALL keeps the server (its run_id) but not the records: the
	// marker is gone, and proofs accepted before it are not accepted again.
	pre := rig.preOutageProofs(t, 3)
	before := rig.losses("marker_gone", "declared_elsewhere")
	if err := srv.Client().FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	rig.replayAll(t, pre)
	for i, g := range rig.gws {
		waitAccepted(t, g, func() reply { return rig.do(t, i, "/deny/after-flush", "") })
	}
	rig.expectLoss(t, before, "marker_gone", "declared_elsewhere")
}

func TestFaultSentinelFailover(t *testing.T) {
	s := redistopo.StartSentinel(t)
	rig := startFaultRig(t, func(prefix string) string {
		return fmt.Sprintf("redis {\n\taddrs %s\n\tmaster_name %s\n\tkey_prefix %s\n}", strings.Join(s.SentinelAddrs(), " "), s.MasterName, prefix)
	})
	rig.cacheMember(t)
	rig.runOutage(t, func() (time.Time, time.Time) {
		old := s.KillMaster()
		killed := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := s.WaitFailover(ctx, old.Addr); err != nil {
			t.Fatalf("no failover: %v", err)
		}
		return killed, time.Now()
	})
	rig.expectLoss(t, [2]int{}, "server_changed", "declared_elsewhere")
	rig.checkInvalidation(t)
}

func TestFaultClusterFailover(t *testing.T) {
	c := redistopo.StartCluster(t)
	rig := startFaultRig(t, func(prefix string) string {
		return fmt.Sprintf("redis {\n\taddrs %s\n\tkey_prefix %s\n}", strings.Join(c.Addrs(), " "), prefix)
	})
	rig.cacheMember(t)
	attempts, killed, back := rig.runOutage(t, func() (time.Time, time.Time) {
		old := c.KillMaster(0)
		killed := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := c.WaitPromotion(ctx, old.Addr); err != nil {
			t.Fatalf("no promotion: %v", err)
		}
		return killed, time.Now()
	})
	rig.expectLoss(t, [2]int{}, "server_changed", "declared_elsewhere")
	// A dead shard fails only the keys it owns: while its master was dead,
	// fresh proofs whose keys live on the other shards were accepted on the
	// deny route.
	ok, refused := 0, 0
	for _, a := range attempts {
		if a.replay || a.route != "deny" || a.at.Before(killed.Add(200*time.Millisecond)) || a.at.After(back) {
			continue
		}
		if a.status == http.StatusOK {
			ok++
		} else {
			refused++
		}
	}
	t.Logf("deny route while a master was dead: %d accepted, %d refused", ok, refused)
	if ok == 0 {
		t.Errorf("no fresh proof was accepted on the deny route while one of three masters was dead")
	}
	rig.checkInvalidation(t)
}
