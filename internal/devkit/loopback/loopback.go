// Package loopback keeps the test doubles (the HelseID and registry
// simulators) on loopback addresses.
package loopback

import (
	"fmt"
	"net"
)

// Addr applies the default address 127.0.0.1:0 and refuses any host that is
// not a loopback IP or "localhost" (which becomes 127.0.0.1). who names the
// double in errors.
func Addr(who, addr string) (string, error) {
	if addr == "" {
		return "127.0.0.1:0", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: bad address %q: %w", who, addr, err)
	}
	if host == "localhost" {
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("%s: refusing non-loopback address %q (test double, loopback only)", who, addr)
	}
	return addr, nil
}
