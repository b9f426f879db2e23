package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// requestTimeout bounds one request, connection set-up included.
const requestTimeout = 10 * time.Second

// statusTransportError marks a request that got no HTTP response.
const statusTransportError = -1

// load is one timed run: n requests from reqs (request i is reqs[i%len(reqs)])
// to addr over conns keep-alive connections.
type load struct {
	addr     string
	reqs     [][]byte // complete HTTP/1.1 requests, pre-built before the run
	n        int
	conns    int
	deadline time.Duration // the whole run, after which it stops short
	// cpu, when set, is read right before the first request and right
	// after the last response.
	cpu func() (cpuSample, error)
}

// result is what a run measured.
type result struct {
	done     int             // requests that got a response or failed
	elapsed  time.Duration   // first request sent to last response read
	cpu      cpuSample       // CPU ticks spent over elapsed
	lat      []time.Duration // of the requests that got a response, ascending
	statuses map[int]int     // status code (or statusTransportError) -> count, non-200 only
	sample   string          // the first non-200 answer or transport error
}

// errors is the number of requests that did not get a 200.
func (r result) errors() int {
	n := 0
	for _, c := range r.statuses {
		n += c
	}
	return n
}

// rps is completed requests per second.
func (r result) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

// describeErrors lists the non-200 answers, e.g. "401 ×12, transport ×1".
func (r result) describeErrors() string {
	codes := make([]int, 0, len(r.statuses))
	for c := range r.statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		name := fmt.Sprint(c)
		if c == statusTransportError {
			name = "transport error"
		}
		parts = append(parts, fmt.Sprintf("%s ×%d", name, r.statuses[c]))
	}
	return strings.Join(parts, ", ")
}

// conn is one keep-alive client connection.
type conn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
}

func dial(addr string) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, requestTimeout)
	if err != nil {
		return nil, err
	}
	return &conn{addr: addr, c: c, br: bufio.NewReaderSize(c, 16<<10)}, nil
}

func (c *conn) redial() error {
	_ = c.c.Close()
	nc, err := dial(c.addr)
	if err != nil {
		return err
	}
	*c = *nc
	return nil
}

// roundTrip sends one pre-built request and reads the whole response. It
// returns the status, and the body when it is not 200 (for the report).
func (c *conn) roundTrip(req []byte, deadline time.Time) (status int, body string, closeConn bool, err error) {
	_ = c.c.SetDeadline(deadline)
	if _, err := c.c.Write(req); err != nil {
		return 0, "", true, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, "", true, err
	}
	if resp.StatusCode == http.StatusOK {
		_, err = io.Copy(io.Discard, resp.Body)
	} else {
		var b []byte
		b, err = io.ReadAll(io.LimitReader(resp.Body, 512))
		body = string(b)
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	return resp.StatusCode, body, resp.Close || err != nil, err
}

// run fires l.n requests and measures them. The connections are opened
// before the clock and the CPU counter start. It stops early when ctx ends
// or the deadline passes; result.done says how many requests were made.
func (l load) run(ctx context.Context) (result, error) {
	if l.n <= 0 || len(l.reqs) == 0 || l.conns <= 0 {
		return result{}, errors.New("load: nothing to send")
	}
	conns, err := l.dialAll()
	defer func() {
		for _, c := range conns {
			_ = c.c.Close()
		}
	}()
	if err != nil {
		return result{}, err
	}

	// On SIGINT (ctx done) the blocked reads end at once.
	stopWatch := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			_ = c.c.SetDeadline(time.Now())
		}
	})
	defer stopWatch()
	st := &runState{status: make([]int16, l.n), lat: make([]time.Duration, l.n)}
	start, wg := l.workers(ctx, conns, st)
	elapsed, cpu, err := l.release(start, wg, st)
	if err != nil {
		return result{}, err
	}
	r := st.result(elapsed, cpu)
	if err := ctx.Err(); err != nil {
		return r, err
	}
	return r, nil
}

// dialAll opens l.conns connections; it returns those it opened with the
// error of the one it could not.
func (l load) dialAll() ([]*conn, error) {
	conns := make([]*conn, 0, l.conns)
	for range l.conns {
		c, err := dial(l.addr)
		if err != nil {
			return conns, fmt.Errorf("load: connect to %s: %w", l.addr, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// workers starts a worker per connection, each waiting for start to be
// closed; wg ends when all have.
func (l load) workers(ctx context.Context, conns []*conn, st *runState) (start chan struct{}, wg *sync.WaitGroup) {
	start, wg = make(chan struct{}), &sync.WaitGroup{}
	stopAt := time.Now().Add(l.deadline)
	for _, c := range conns {
		wg.Go(func() {
			<-start
			if !st.abort.Load() {
				l.work(ctx, c, st, stopAt)
			}
		})
	}
	return start, wg
}

// runState is what the workers of one run share.
type runState struct {
	status     []int16         // per request: 0 = not sent, the HTTP status or statusTransportError
	lat        []time.Duration // per request that got a response
	next       atomic.Int64    // the next request to send
	abort      atomic.Bool     // set before the workers are released: they send nothing
	sampleOnce sync.Once
	sample     string // the first non-200 answer or transport error
}

// work sends the next request on c until all are sent, ctx ends or stopAt
// passes.
func (l load) work(ctx context.Context, c *conn, st *runState, stopAt time.Time) {
	for {
		i := int(st.next.Add(1) - 1)
		if i >= l.n || ctx.Err() != nil || time.Now().After(stopAt) {
			return
		}
		t0 := time.Now()
		dl := t0.Add(requestTimeout)
		if stopAt.Before(dl) {
			dl = stopAt
		}
		code, body, closeConn, err := c.roundTrip(l.reqs[i%len(l.reqs)], dl)
		if err != nil {
			st.status[i] = statusTransportError
			st.sampleOnce.Do(func() { st.sample = err.Error() })
		} else {
			st.lat[i] = time.Since(t0)
			st.status[i] = int16(code)
			if code != http.StatusOK {
				st.sampleOnce.Do(func() { st.sample = fmt.Sprintf("%d %s", code, strings.TrimSpace(body)) })
			}
		}
		if closeConn && c.redial() != nil {
			return
		}
	}
}

// release lets the workers go and waits for them, reading the CPU counter
// (when l.cpu is set) right before and right after. It returns the time
// and the CPU between.
func (l load) release(start chan struct{}, wg *sync.WaitGroup, st *runState) (time.Duration, cpuSample, error) {
	var cpu0, cpu1 cpuSample
	var err error
	if l.cpu != nil {
		if cpu0, err = l.cpu(); err != nil {
			st.abort.Store(true)
			close(start)
			wg.Wait()
			return 0, cpuSample{}, err
		}
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	if l.cpu != nil {
		if cpu1, err = l.cpu(); err != nil {
			return 0, cpuSample{}, err
		}
	}
	return elapsed, cpu1.sub(cpu0), nil
}

// result tallies the requests sent.
func (st *runState) result(elapsed time.Duration, cpu cpuSample) result {
	r := result{elapsed: elapsed, cpu: cpu, statuses: map[int]int{}, sample: st.sample}
	r.lat = make([]time.Duration, 0, len(st.status))
	for i, s := range st.status {
		if s == 0 {
			continue
		}
		r.done++
		if s != http.StatusOK {
			r.statuses[int(s)]++
		}
		if s != statusTransportError {
			r.lat = append(r.lat, st.lat[i])
		}
	}
	slices.Sort(r.lat)
	return r
}
