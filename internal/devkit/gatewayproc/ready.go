package gatewayproc

import (
	"context"
	"fmt"
	"net"
	"net/http"
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
// admin endpoint or a site.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
