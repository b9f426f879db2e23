package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "health",
		Usage: "[--address <admin host:port>] [--timeout 5s]",
		Short: "Asks a running gateway's admin endpoint for its health (exit status 0 when healthy)",
		Long: `
health sends GET /helseid/health to the admin endpoint of a running gateway
and prints the answer: the issuers' key sets, each Redis (pinged) and each
membership registry. The exit status is 0 when the gateway answers 200
(ok, or pending before the first request), else 1 (503 when something is
down, or no answer at all).

It is the container image's HEALTHCHECK: the image has no shell and no curl.
--address defaults to HELSEGATE_ADMIN, else localhost:2019 (Caddy's default
admin address).`,
		CobraFunc: func(cmd *cobra.Command) {
			f := cmd.Flags()
			f.String("address", "", "the admin endpoint (default $HELSEGATE_ADMIN, else localhost:2019)")
			f.Duration("timeout", 5*time.Second, "how long to wait for the answer")
			cmd.RunE = func(cmd *cobra.Command, _ []string) error {
				addr, _ := cmd.Flags().GetString("address")
				timeout, _ := cmd.Flags().GetDuration("timeout")
				code, err := runHealth(cmd.Context(), os.Stdout, healthURL(addr), timeout)
				if err != nil {
					fmt.Fprintln(os.Stderr, "health:", err)
				}
				if code != caddy.ExitCodeSuccess {
					os.Exit(code)
				}
				return nil
			}
		},
	})
}

// healthURL is the health endpoint on the admin address addr (host:port or
// a URL), or on HELSEGATE_ADMIN or Caddy's default when addr is empty.
func healthURL(addr string) string {
	if addr == "" {
		addr = os.Getenv("HELSEGATE_ADMIN")
	}
	if addr == "" {
		addr = caddy.DefaultAdminListen
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return strings.TrimSuffix(addr, "/") + "/helseid/health"
}

// runHealth asks url and prints the status and the body to w. It returns 0
// for a 200 and 1 for anything else.
func runHealth(ctx context.Context, w io.Writer, url string, timeout time.Duration) (int, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	fmt.Fprintf(w, "%s %s\n%s", url, resp.Status, body)
	if resp.StatusCode != http.StatusOK {
		return caddy.ExitCodeFailedStartup, nil
	}
	return caddy.ExitCodeSuccess, nil
}
