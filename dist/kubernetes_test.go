package dist

import (
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
	"gopkg.in/yaml.v3"
)

// The Kubernetes manifests in kubernetes/ against the gateway.

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
