package dist

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	_ "github.com/helsegate/helsegate/caddymodule"
)

// The cross-checks of the deployment examples: every path, port and
// variable the systemd unit and the Kubernetes manifests name exists in the
// gateway (an admin route registered by caddymodule, a listener of the
// Caddyfile they ship, a variable that Caddyfile reads), and the Caddyfiles
// load with the values the examples give.

// caddyfileVars finds the variables a Caddyfile reads: {$NAME}, {$NAME:default}
// (substituted at adapt time) and {env.NAME} (read at provision).
var caddyfileVars = regexp.MustCompile(`\{\$([A-Za-z0-9_]+)(?::[^}]*)?\}|\{env\.([A-Za-z0-9_]+)\}`)

// varsRead maps each variable the Caddyfile reads to whether it has a
// default ({$NAME:default}); comment lines are left out.
func varsRead(caddyfile string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(caddyfile, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, m := range caddyfileVars.FindAllStringSubmatch(line, -1) {
			name := m[1] + m[2]
			_, seen := out[name]
			hasDefault := strings.Contains(m[0], ":")
			out[name] = hasDefault && (!seen || out[name])
		}
	}
	return out
}

// caddyEnv are variables the examples set for Caddy itself, not for the Caddyfile.
var caddyEnv = map[string]bool{"XDG_DATA_HOME": true, "XDG_CONFIG_HOME": true, "HOME": true}

// adaptAndValidate adapts a Caddyfile with env set and validates it as
// `helsegate validate` would (every module provisioned, nothing started),
// and returns the JSON config.
func adaptAndValidate(t *testing.T, name, caddyfile string, env map[string]string) map[string]any {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfgJSON, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": name})
	if err != nil {
		t.Fatalf("%s: adapting: %v", name, err)
	}
	for _, w := range warnings {
		t.Logf("%s: warning: %s", name, w.String())
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("%s: validating with the example's values: %v", name, err)
	}
	var out map[string]any
	if err := json.Unmarshal(cfgJSON, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// ---- Kubernetes ----

type k8sEnv struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string    `yaml:"path"`
		Port yaml.Node `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Replicas     int `yaml:"replicas"`
		MinAvailable int `yaml:"minAvailable"`
		Selector     struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		// A Service's selector is the labels themselves.
		ServiceSelector map[string]string `yaml:"-"`
		Ports           []struct {
			Name       string    `yaml:"name"`
			Port       int       `yaml:"port"`
			TargetPort yaml.Node `yaml:"targetPort"`
		} `yaml:"ports"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				Containers []struct {
					Name  string   `yaml:"name"`
					Args  []string `yaml:"args"`
					Image string   `yaml:"image"`
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					Env            []k8sEnv  `yaml:"env"`
					StartupProbe   *k8sProbe `yaml:"startupProbe"`
					ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
					LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
					Resources      struct {
						Requests map[string]string `yaml:"requests"`
						Limits   map[string]string `yaml:"limits"`
					} `yaml:"resources"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name  string `yaml:"name"`
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// loadK8s reads every document of every manifest in dist/kubernetes, by kind.
func loadK8s(t *testing.T) map[string]k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	out := map[string]k8sObject{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var obj k8sObject
			err := dec.Decode(&obj)
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if obj.Kind == "Service" {
				// A Service's selector is the labels themselves, not matchLabels.
				var svc struct {
					Spec struct {
						Selector map[string]string `yaml:"selector"`
					} `yaml:"spec"`
				}
				if err := yaml.Unmarshal(b, &svc); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				obj.Spec.ServiceSelector = svc.Spec.Selector
			}
			if _, dup := out[obj.Kind]; dup {
				t.Fatalf("two %s objects: the test reads one of each", obj.Kind)
			}
			out[obj.Kind] = obj
		}
	}
	return out
}

// nodeString is a yaml node's scalar value.
func nodeString(n yaml.Node) string { return n.Value }

func TestKubernetesExample(t *testing.T) {
	objs := loadK8s(t)
	for _, kind := range []string{"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"} {
		if _, ok := objs[kind]; !ok {
			t.Fatalf("no %s in kubernetes/", kind)
		}
	}
	dep, cm, sec, svc, pdb := objs["Deployment"], objs["ConfigMap"], objs["Secret"], objs["Service"], objs["PodDisruptionBudget"]
	if dep.Spec.Replicas != 3 {
		t.Errorf("Deployment replicas = %d, want 3", dep.Spec.Replicas)
	}
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(dep.Spec.Template.Spec.Containers))
	}
	c := dep.Spec.Template.Spec.Containers[0]

	// Labels: the selectors of the Deployment, the Service and the PDB pick the pods.
	podLabels := dep.Spec.Template.Metadata.Labels
	for what, sel := range map[string]map[string]string{
		"Deployment": dep.Spec.Selector.MatchLabels, "PodDisruptionBudget": pdb.Spec.Selector.MatchLabels, "Service": svc.Spec.ServiceSelector,
	} {
		if len(sel) == 0 {
			t.Errorf("%s has no selector", what)
		}
		for k, v := range sel {
			if podLabels[k] != v {
				t.Errorf("%s selects %s=%s, the pods are labelled %v", what, k, v, podLabels)
			}
		}
	}
	if pdb.Spec.MinAvailable < 1 || pdb.Spec.MinAvailable >= dep.Spec.Replicas {
		t.Errorf("PodDisruptionBudget minAvailable %d: want between 1 and replicas-1", pdb.Spec.MinAvailable)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources: want cpu and memory requests and a memory limit, got %+v", c.Resources)
	}

	// The image: a registry's, by version (a bare name is Docker Hub's; :latest moves).
	if name, tag, _ := strings.Cut(c.Image, ":"); !strings.Contains(name, "/") || !strings.Contains(strings.SplitN(name, "/", 2)[0], ".") || tag == "" || tag == "latest" {
		t.Errorf("image %q: want a registry-qualified name with a version tag", c.Image)
	}

	// The Caddyfile: mounted where the container's --config names it.
	caddyfile, ok := cm.Data["Caddyfile"]
	if !ok {
		t.Fatal("the ConfigMap has no Caddyfile")
	}
	// Every variable it reads without a default is named by require_env, so
	// a missing one is an error that names it.
	required := map[string]bool{}
	for _, line := range strings.Split(caddyfile, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "require_env" {
			for _, v := range f[1:] {
				required[v] = true
			}
		}
	}
	for v, hasDefault := range varsRead(caddyfile) {
		if !hasDefault && !required[v] && strings.Contains(caddyfile, "{$"+v+"}") {
			t.Errorf("the ConfigMap's Caddyfile reads {$%s} with no default, and require_env does not name it", v)
		}
	}
	configArg := argAfter(c.Args, "--config")
	var mounted string
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != cm.Metadata.Name {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name {
				for _, it := range v.ConfigMap.Items {
					if it.Key == "Caddyfile" {
						mounted = filepath.Join(m.MountPath, it.Path)
					}
				}
			}
		}
	}
	if configArg == "" || configArg != mounted {
		t.Errorf("the container runs --config %q; the ConfigMap's Caddyfile is mounted at %q", configArg, mounted)
	}
	if args := strings.Join(c.Args, " "); !strings.HasPrefix(args, "run ") || argAfter(c.Args, "--adapter") != "caddyfile" {
		t.Errorf("container args %q: want run --config … --adapter caddyfile", args)
	}

	// Variables: every one the Caddyfile reads is set, every one set is read,
	// and secrets come from the Secret.
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := sec.StringData[ref.Key]
			if ref.Name != sec.Metadata.Name || !ok {
				t.Errorf("env %s: secret %s key %s is not in the example Secret", e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		default:
			env[e.Name] = e.Value
		}
	}
	read := varsRead(caddyfile)
	for v := range read {
		if _, ok := env[v]; !ok {
			t.Errorf("the Caddyfile reads %s; the Deployment does not set it", v)
		}
	}
	for v := range env {
		if _, ok := read[v]; !ok && !caddyEnv[v] {
			t.Errorf("the Deployment sets %s; the Caddyfile does not read it", v)
		}
	}
	for _, secret := range []string{"MEMBERSHIP_TOKEN", "REDIS_PASSWORD"} {
		if !strings.Contains(caddyfile, "{env."+secret+"}") {
			t.Errorf("%s must be read as {env.%s} (a {$VAR} would put it in the JSON config)", secret, secret)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil && strings.Contains(caddyfile, "{env."+e.Name+"}") && e.Name != "XDG_DATA_HOME" {
			t.Errorf("%s is read as a secret ({env.%s}) but set in plain text in the Deployment", e.Name, e.Name)
		}
	}

	// The Caddyfile loads with these values; Redis is Sentinel.
	cfg := adaptAndValidate(t, "kubernetes/configmap.yaml:Caddyfile", caddyfile, env)
	if !regexp.MustCompile(`(?m)^\s*master_name `).MatchString(caddyfile) || !strings.Contains(env["REDIS_SENTINEL_ADDRS"], ":26379") {
		t.Error("the example's Redis is not a Sentinel (addrs of sentinels with master_name)")
	}

	// Ports: every containerPort is a listener of the Caddyfile.
	ports := map[string]int{}
	listens := serverListens(cfg)
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
		if _, ok := listens[p.ContainerPort]; !ok {
			t.Errorf("containerPort %s %d: the Caddyfile listens on %v", p.Name, p.ContainerPort, keys(listens))
		}
	}
	for _, p := range svc.Spec.Ports {
		if _, ok := ports[nodeString(p.TargetPort)]; !ok {
			t.Errorf("Service port %s targets %q, not a named containerPort", p.Name, nodeString(p.TargetPort))
		}
	}

	// Probes: on a listener of the Caddyfile, on a path it routes to a real
	// endpoint: /helseid/health to the admin endpoint (where caddymodule
	// registers it), /metrics to Caddy's metrics handler.
	adminAddr := ""
	if a, ok := cfg["admin"].(map[string]any); ok {
		adminAddr, _ = a["listen"].(string)
	}
	if adminAddr == "" || !strings.HasPrefix(adminAddr, "localhost:") && !strings.HasPrefix(adminAddr, "127.0.0.1:") {
		t.Errorf("admin listens on %q: it must stay on loopback (the probes go through the ops site)", adminAddr)
	}
	adminRoutes := registeredAdminRoutes(t)
	for name, p := range map[string]*k8sProbe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", name)
			continue
		}
		port, ok := ports[nodeString(p.HTTPGet.Port)]
		if !ok {
			if port, ok = atoi(nodeString(p.HTTPGet.Port)); !ok {
				t.Errorf("%s: port %q is not a containerPort", name, nodeString(p.HTTPGet.Port))
				continue
			}
		}
		server, ok := listens[port]
		if !ok {
			t.Errorf("%s: nothing of the Caddyfile listens on %d", name, port)
			continue
		}
		handlers := handlersFor(server["routes"], p.HTTPGet.Path)
		switch {
		case p.HTTPGet.Path == "/metrics":
			if !slices.ContainsFunc(handlers, func(h map[string]any) bool { return h["handler"] == "metrics" }) {
				t.Errorf("%s: %s on %d is not Caddy's metrics handler (%v)", name, p.HTTPGet.Path, port, handlers)
			}
		case adminRoutes[p.HTTPGet.Path]:
			if !slices.ContainsFunc(handlers, func(h map[string]any) bool { return proxiesTo(h, adminAddr) }) {
				t.Errorf("%s: %s on %d is not passed to the admin endpoint %s (%v)", name, p.HTTPGet.Path, port, adminAddr, handlers)
			}
		default:
			t.Errorf("%s: %s is neither /metrics nor an admin route of caddymodule (%v)", name, p.HTTPGet.Path, adminRoutes)
		}
	}
	if c.StartupProbe != nil && c.StartupProbe.HTTPGet != nil && c.StartupProbe.HTTPGet.Path != "/helseid/health" {
		t.Errorf("startupProbe: want /helseid/health, got %s", c.StartupProbe.HTTPGet.Path)
	}
}

func argAfter(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func atoi(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil
}

func keys[V any](m map[int]V) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// registeredAdminRoutes lists the admin routes caddymodule registers.
func registeredAdminRoutes(t *testing.T) map[string]bool {
	t.Helper()
	mi, err := caddy.GetModule("admin.api.helseid")
	if err != nil {
		t.Fatal(err)
	}
	router, ok := mi.New().(caddy.AdminRouter)
	if !ok {
		t.Fatal("admin.api.helseid is not an AdminRouter")
	}
	out := map[string]bool{}
	for _, r := range router.Routes() {
		out[r.Pattern] = true
	}
	return out
}

// serverListens maps each port the HTTP servers listen on to its server.
func serverListens(cfg map[string]any) map[int]map[string]any {
	out := map[int]map[string]any{}
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	for _, s := range servers {
		srv, _ := s.(map[string]any)
		ls, _ := srv["listen"].([]any)
		for _, l := range ls {
			addr, _ := l.(string)
			if i := strings.LastIndexByte(addr, ':'); i >= 0 {
				if p, ok := atoi(addr[i+1:]); ok {
					out[p] = srv
				}
			}
		}
	}
	return out
}

// handlersFor returns the terminal handlers of the first route (searched
// through subroutes) whose path matcher names path exactly.
func handlersFor(routes any, path string) []map[string]any {
	rs, _ := routes.([]any)
	for _, r := range rs {
		route, _ := r.(map[string]any)
		matched := false
		ms, _ := route["match"].([]any)
		for _, m := range ms {
			mm, _ := m.(map[string]any)
			ps, _ := mm["path"].([]any)
			for _, p := range ps {
				if p == path {
					matched = true
				}
			}
		}
		hs, _ := route["handle"].([]any)
		var out []map[string]any
		for _, h := range hs {
			hm, _ := h.(map[string]any)
			if hm["handler"] == "subroute" {
				if inner := handlersFor(hm["routes"], path); inner != nil {
					return inner
				}
				if matched {
					out = append(out, allHandlers(hm["routes"])...)
				}
				continue
			}
			out = append(out, hm)
		}
		if matched {
			return out
		}
	}
	return nil
}

func allHandlers(routes any) []map[string]any {
	var out []map[string]any
	rs, _ := routes.([]any)
	for _, r := range rs {
		route, _ := r.(map[string]any)
		hs, _ := route["handle"].([]any)
		for _, h := range hs {
			hm, _ := h.(map[string]any)
			if hm["handler"] == "subroute" {
				out = append(out, allHandlers(hm["routes"])...)
			} else {
				out = append(out, hm)
			}
		}
	}
	return out
}

// proxiesTo says whether h is a reverse_proxy to addr that sets the Host the
// admin endpoint accepts.
func proxiesTo(h map[string]any, addr string) bool {
	if h["handler"] != "reverse_proxy" {
		return false
	}
	ups, _ := h["upstreams"].([]any)
	for _, u := range ups {
		um, _ := u.(map[string]any)
		if um["dial"] == addr {
			b, _ := json.Marshal(h["headers"])
			return strings.Contains(string(b), `"Host"`)
		}
	}
	return false
}

// ---- systemd ----

// unitFile reads a systemd unit into key -> values (a key may repeat).
func unitFile(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", path, line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

// envFile reads KEY=value lines.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=value", path, line)
		}
		out[k] = v
	}
	return out
}

func TestSystemdUnit(t *testing.T) {
	u := unitFile(t, filepath.Join("systemd", "helsegate.service"))
	one := func(k string) string {
		if len(u[k]) != 1 {
			t.Errorf("%s: want exactly one, got %q", k, u[k])
			return ""
		}
		return u[k][0]
	}
	for k, want := range map[string]string{
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "DynamicUser": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
	} {
		if got := one(k); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	if caps := one("AmbientCapabilities"); strings.TrimSpace(caps) != "CAP_NET_BIND_SERVICE" {
		t.Errorf("AmbientCapabilities=%q: want CAP_NET_BIND_SERVICE alone", caps)
	}
	if one("StateDirectory") == "" {
		t.Error("no StateDirectory")
	}
	if !strings.Contains(one("Environment"), "XDG_DATA_HOME=/var/lib/"+u["StateDirectory"][0]) {
		t.Errorf("Caddy's data (XDG_DATA_HOME) must be in the state directory: %q", u["Environment"])
	}

	// ExecStart and ExecReload: one binary, commands and flags it has, one config.
	start, reload := strings.Fields(one("ExecStart")), strings.Fields(one("ExecReload"))
	if len(start) < 2 || len(reload) < 2 {
		t.Fatalf("ExecStart %q, ExecReload %q", start, reload)
	}
	if start[0] != reload[0] || filepath.Base(start[0]) != "helsegate" {
		t.Errorf("ExecStart runs %s, ExecReload %s: want one helsegate binary", start[0], reload[0])
	}
	if start[1] != "run" || reload[1] != "reload" {
		t.Errorf("ExecStart %q / ExecReload %q: want helsegate run / helsegate reload", start[1], reload[1])
	}
	for _, cmdline := range [][]string{start, reload} {
		checkCommandFlags(t, cmdline[1], cmdline[2:])
	}
	config := argAfter(start, "--config")
	if config == "" || argAfter(reload, "--config") != config {
		t.Errorf("ExecStart --config %q, ExecReload --config %q: want one Caddyfile", config, argAfter(reload, "--config"))
	}
	if argAfter(start, "--adapter") != "caddyfile" || argAfter(reload, "--adapter") != "caddyfile" {
		t.Error("ExecStart and ExecReload must both say --adapter caddyfile")
	}

	// The environment file: the example names exactly the variables the
	// repository's Caddyfiles read, and they load with its values.
	envPath := one("EnvironmentFile")
	if !strings.HasPrefix(envPath, "/etc/helsegate/") || !strings.HasPrefix(config, "/etc/helsegate/") {
		t.Errorf("EnvironmentFile %q and --config %q: want both under /etc/helsegate (ConfigurationDirectory)", envPath, config)
	}
	env := envFile(t, filepath.Join("systemd", "helsegate.env.example"))
	readByAny := map[string]bool{}
	checked := 0
	for _, name := range []string{"Caddyfile.example", "Caddyfile.production"} {
		b, err := os.ReadFile(filepath.Join("..", name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		checked++
		for v, hasDefault := range varsRead(string(b)) {
			readByAny[v] = true
			if _, ok := env[v]; !ok && !hasDefault {
				t.Errorf("%s reads %s, with no default; helsegate.env.example does not set it", name, v)
			}
		}
		t.Run(name, func(t *testing.T) {
			adaptAndValidate(t, name, string(b), env)
		})
	}
	if checked == 0 {
		t.Fatal("no Caddyfile.example or Caddyfile.production in the repository root")
	}
	for v := range env {
		if !readByAny[v] {
			t.Errorf("helsegate.env.example sets %s; no Caddyfile of the repository reads it", v)
		}
	}
}

// checkCommandFlags checks that helsegate has the command and every --flag.
func checkCommandFlags(t *testing.T, command string, args []string) {
	t.Helper()
	c, ok := caddycmd.Commands()[command]
	if !ok {
		t.Errorf("helsegate has no %q command", command)
		return
	}
	cc := &cobra.Command{Use: command}
	if c.CobraFunc != nil {
		c.CobraFunc(cc)
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if cc.Flags().Lookup(name) == nil {
			t.Errorf("helsegate %s has no flag --%s", command, name)
		}
	}
}
