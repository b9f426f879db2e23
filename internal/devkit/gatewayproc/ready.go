package gatewayproc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// readyPoll is how often waitReady probes.
const readyPoll = 50 * time.Millisecond

// waitReady polls until the admin endpoint and every site answer, the
// process exits, ctx ends or timeout passes.
func (p *Process) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during start: %v", p.name, p.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		err := p.probe(c)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %v", p.name, timeout, err)
		}
		time.Sleep(readyPoll)
	}
}

// probe asks the admin endpoint for the config and connects to every site.
func (p *Process) probe(c *http.Client) error {
	resp, err := c.Get("http://" + p.admin + "/config/")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin /config/: %s", resp.Status)
	}
	for _, a := range p.addrs {
		conn, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return err
		}
		conn.Close()
	}
	return nil
}

// FreeAddr returns a loopback host:port that was free a moment ago, for an
// admin endpoint or a site. The port comes from below the kernel's ephemeral
// range (net.ipv4.ip_local_port_range), where neither an outgoing connection
// nor another "port 0" listener can take it between this check and the
// gateway's bind; a port of 0 from the kernel would be in that range and
// could be, on a machine running many tests at once. No port is handed out
// twice by one process.
func FreeAddr() (string, error) {
	lo, hi := belowEphemeral()
	for range 200 {
		if hi <= lo {
			break
		}
		port := lo + rand.IntN(hi-lo)
		freePorts.Lock()
		used := freePorts.used[port]
		freePorts.used[port] = true
		freePorts.Unlock()
		if used {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return ln.Addr().String(), nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// freePorts remembers the ports FreeAddr handed out.
var freePorts = struct {
	sync.Mutex
	used map[int]bool
}{used: map[int]bool{}}

// belowEphemeral returns [lo, hi): up to 12,000 ports just below the
// ephemeral range, none under 10000; an empty range when it cannot tell.
func belowEphemeral() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	first, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, 0
	}
	return max(10000, first-12000), first
}
