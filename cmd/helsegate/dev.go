package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// devMembers is the registry of 'helsegate dev' unless --members names a file:
// 917897468 is an active member of kjernejournal, 994598759 is suspended,
// 922734046's authorization has expired, every other organization is unknown.
//
//go:embed dev_members.json
var devMembers []byte

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "dev",
		Usage: "[--config Caddyfile.example] [--port 8080] [--members <file>]",
		Short: "Runs the gateway on a laptop with a HelseID simulator, a registry simulator and a stand-in upstream",
		Long: `
dev starts, on loopback only:
  - a HelseID simulator (discovery, JWKS, a token endpoint issuing DPoP-bound
    client-credentials tokens for chosen org numbers) on --issuer-port,
  - a membership registry simulator (HTTP contract v1) fed from --members
    (decoded strictly: an unknown field is an error),
  - a stand-in Kjernejournal upstream that echoes what it received,
  - and the gateway on --config (Caddyfile.example), with the in-process store
    unless REDIS_URL is set.
The config runs unchanged: dev points it at the above through HELSEID_ISSUER,
MEMBERSHIP_REGISTRY, KJ_UPSTREAM, PJD_UPSTREAM, HELSEGATE_SITE, HELSEGATE_PUBLIC_ORIGIN and
HELSEGATE_ADMIN, keeps the gateway on loopback with HELSEGATE_BIND=127.0.0.1,
and sets MEMBERSHIP_TOKEN (shared with the registry simulator) and
HELSEGATE_ENVIRONMENT=test when they are unset. Caddyfile.production runs
under dev too.
The simulators are test doubles: never point a real client at them.
It prints what to run next, and stops on Ctrl-C.`,
		CobraFunc: func(cmd *cobra.Command) {
			f := cmd.Flags()
			f.String("config", "Caddyfile.example", "the Caddyfile to run")
			f.Int("port", 8080, "gateway port on localhost")
			f.Int("issuer-port", 8081, "HelseID simulator port")
			f.Int("registry-port", 8082, "registry simulator port")
			f.Int("upstream-port", 9080, "stand-in upstream port")
			f.String("admin", "localhost:2019", "Caddy admin endpoint")
			f.String("members", "", "registry members file (the file source's format); default: a built-in set")
			cmd.RunE = func(cmd *cobra.Command, _ []string) error { return runDev(cmd) }
		},
	})
}

func runDev(cmd *cobra.Command) error {
	f := cmd.Flags()
	str := func(n string) string { v, _ := f.GetString(n); return v }
	port := func(n string) int { v, _ := f.GetInt(n); return v }

	doc, err := devMembersDocument(str("members"))
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	d, err := startDevDoubles(doc, port("issuer-port"), port("registry-port"), port("upstream-port"))
	if err != nil {
		return err
	}
	defer d.close()

	site := fmt.Sprintf("http://localhost:%d", port("port"))
	note := d.setEnv(site, str("admin"), str("config"))
	if err := loadDevGateway(str("config")); err != nil {
		return err
	}
	defer func() { _ = caddy.Stop() }()

	printDevHelp(site, note, d.sim.Issuer(), d.reg.URL(), d.upstreamAddr, doc)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	fmt.Fprintln(os.Stderr, "dev: stopping")
	return nil
}

// devMembersDocument reads the registry's members from path, or the
// built-in set when path is empty. A members file is decoded strictly: a
// misspelled field is an error, not an authorization silently read with its
// zero value.
func devMembersDocument(path string) (registrysim.Document, error) {
	if path != "" {
		return registrysim.ReadDocument(path)
	}
	return registrysim.DecodeDocument(devMembers)
}

// devDoubles are the test doubles 'helsegate dev' runs the gateway against.
type devDoubles struct {
	sim          *helseidsim.Server
	reg          *registrysim.Server
	upstream     *http.Server
	upstreamAddr string
}

// startDevDoubles starts the HelseID simulator, the registry simulator
// (sharing MEMBERSHIP_TOKEN, set to a dev value when unset) and the echo
// upstream on loopback. On error, what was started is closed.
func startDevDoubles(doc registrysim.Document, issuerPort, registryPort, upstreamPort int) (*devDoubles, error) {
	d := &devDoubles{upstreamAddr: fmt.Sprintf("127.0.0.1:%d", upstreamPort)}
	if err := d.start(doc, issuerPort, registryPort); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// start starts the doubles in order, keeping each in d as it comes up.
func (d *devDoubles) start(doc registrysim.Document, issuerPort, registryPort int) error {
	var err error
	d.sim, err = helseidsim.Start(helseidsim.Options{Addr: fmt.Sprintf("127.0.0.1:%d", issuerPort)})
	if err != nil {
		return fmt.Errorf("dev: HelseID simulator: %w", err)
	}
	if os.Getenv("MEMBERSHIP_TOKEN") == "" {
		_ = os.Setenv("MEMBERSHIP_TOKEN", "dev-token")
	}
	d.reg, err = registrysim.Start(registrysim.Options{
		Addr:    fmt.Sprintf("127.0.0.1:%d", registryPort),
		Members: doc.Authorizations,
		Token:   os.Getenv("MEMBERSHIP_TOKEN"),
	})
	if err != nil {
		return fmt.Errorf("dev: registry simulator: %w", err)
	}
	ln, err := net.Listen("tcp", d.upstreamAddr)
	if err != nil {
		return fmt.Errorf("dev: upstream: %w", err)
	}
	d.upstream = &http.Server{Handler: http.HandlerFunc(echoUpstream), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = d.upstream.Serve(ln) }()
	return nil
}

// close stops what startDevDoubles started, the last first.
func (d *devDoubles) close() {
	if d.upstream != nil {
		_ = d.upstream.Close()
	}
	if d.reg != nil {
		_ = d.reg.Close()
	}
	if d.sim != nil {
		_ = d.sim.Close()
	}
}

// setEnv points the config at the doubles through its environment
// variables and returns the line that says what runs where.
func (d *devDoubles) setEnv(site, admin, config string) string {
	_ = os.Setenv("HELSEID_ISSUER", d.sim.Issuer())
	_ = os.Setenv("MEMBERSHIP_REGISTRY", d.reg.URL())
	_ = os.Setenv("KJ_UPSTREAM", d.upstreamAddr)
	_ = os.Setenv("PJD_UPSTREAM", d.upstreamAddr) // the stand-in answers for both APIs
	_ = os.Setenv("HELSEGATE_SITE", site)
	_ = os.Setenv("HELSEGATE_PUBLIC_ORIGIN", site)
	_ = os.Setenv("HELSEGATE_ADMIN", admin)
	// Caddyfile.example listens on every interface unless told otherwise;
	// the simulators hand out tokens to anyone, so dev stays on loopback.
	_ = os.Setenv("HELSEGATE_BIND", "127.0.0.1")
	// The simulators stand in for HelseID's test environment; set, the
	// caller's choice stands (Caddyfile.production has no default for it).
	if os.Getenv("HELSEGATE_ENVIRONMENT") == "" {
		_ = os.Setenv("HELSEGATE_ENVIRONMENT", "test")
	}
	// Without REDIS_URL, the in-process store (Caddyfile.example insists on
	// an explicit choice). The URL is not printed: it may carry a password.
	if os.Getenv("REDIS_URL") == "" {
		_ = os.Setenv("REDIS_URL", "none")
	}
	if os.Getenv("REDIS_URL") != "none" {
		return config + " on 127.0.0.1, Redis from REDIS_URL"
	}
	return config + " on 127.0.0.1, in-process store"
}

// loadDevGateway adapts the Caddyfile at path and starts Caddy with it.
func loadDevGateway(path string) error {
	body, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "dev: %s\n", w.String())
	}
	if err := caddy.Load(cfg, true); err != nil {
		return fmt.Errorf("dev: starting the gateway: %w", err)
	}
	return nil
}

func printDevHelp(site, note, issuer, registry, upstream string, doc registrysim.Document) {
	var lines []string
	for _, a := range doc.Authorizations {
		state := a.Status
		if a.ValidTo != nil && time.Now().After(*a.ValidTo) {
			state = "expired"
		}
		lines = append(lines, fmt.Sprintf("    %s  %-14s %s", a.Organization, a.Service, state))
	}
	sort.Strings(lines)
	fmt.Printf(`
helsegate dev is running (test doubles on loopback; nothing here is real HelseID or Medlemstjenesten)
  gateway              %[1]s/kjernejournal/  (%[6]s)
  HelseID simulator    %[2]s
  registry simulator   %[3]s
  upstream (echo)      http://%[4]s
  members:
%[5]s

Try, in another terminal:
  bin/helsegate call %[1]s/kjernejournal/api/patient                 # allowed: 200, the echo shows X-Helseid-*
  bin/helsegate call --org 994598759 %[1]s/kjernejournal/api/patient # suspended member: 403
  bin/helsegate call --replay %[1]s/kjernejournal/api/patient        # same proof twice: 200, then 401
  bin/helsegate call --scope "nhn:kjernejournal/api nhn:kjernejournal/tillitsrammeverk" --attest string --purpose TREAT %[1]s/pjd/api/documents
                                                                     # a health worker with the trust-framework attest: 200
  curl %[1]s/.well-known/oauth-protected-resource/kjernejournal     # the route's RFC 9728 metadata
  make demo                                                          # every scenario
  curl -X POST %[2]s/simulator/rotate                             # rotate HelseID's signing key
Ctrl-C stops everything.
`, site, issuer, registry, upstream, strings.Join(lines, "\n"), note)
}

// echoUpstream stands in for Kjernejournal: it answers with what it received.
func echoUpstream(w http.ResponseWriter, r *http.Request) {
	seen := map[string]string{}
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-helseid-") {
			seen[k] = r.Header.Get(k)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"upstream": "stand-in kjernejournal",
		"method":   r.Method,
		"path":     r.URL.Path,
		"headers":  seen,
	})
}
