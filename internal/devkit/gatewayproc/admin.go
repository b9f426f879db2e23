package gatewayproc

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// adminClient talks to the admin endpoint without keeping connections (the
// admin server is replaced on every config load).
var adminClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Load replaces the running config with a Caddyfile through the admin
// endpoint's POST /load.
func (p *Process) Load(caddyfile string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+p.admin+"/load", strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %s: %s", resp.Status, body)
	}
	return nil
}

// GlobalOptions renders the global options block of a process whose logs
// go to files: the admin endpoint at admin, no automatic HTTPS, sites bound
// to loopback, no autosaved config, Caddy's own log to logPath and the
// helseid audit log to auditPath (as docs/operations.md, "Audit log",
// advises for production), both JSON at INFO.
func GlobalOptions(admin, logPath, auditPath string) string {
	return fmt.Sprintf(`{
	admin %s
	auto_https off
	default_bind 127.0.0.1
	persist_config off
	log default {
		output file %s
		format json
		level INFO
		exclude http.handlers.helseid.audit
	}
	log audit {
		output file %s
		format json
		level INFO
		include http.handlers.helseid.audit
	}
}
`, admin, logPath, auditPath)
}
