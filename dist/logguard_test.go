package dist

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// guardEnv are values for the variables the shipped Caddyfiles read, enough
// to adapt them.
var guardEnv = map[string]string{
	"HELSEGATE_SITE": "https://gw.example.no", "HELSEGATE_PUBLIC_ORIGIN": "https://gw.example.no",
	"HELSEID_ISSUER": "https://helseid-sts.nhn.no", "HELSEGATE_ENVIRONMENT": "production",
	"KJ_UPSTREAM": "http://127.0.0.1:9", "MEMBERSHIP_REGISTRY": "http://127.0.0.1:9",
	"MEMBERSHIP_TOKEN": "t0ken-for-the-test", "REDIS_URL": "none", "HELSEGATE_BIND": "127.0.0.1",
	"REDIS_SENTINEL_ADDRS": "127.0.0.1:26379", "REDIS_MASTER_NAME": "helsegate", "REDIS_PASSWORD": "pw",
}

// TestShippedCaddyfilesGuardLogs: every Caddyfile the project ships keeps
// the proof, the HPR number and the query string (an access_token in any
// spelling, a patient's identifier) out of every log, and cuts slow clients
// off: the request-integrity rules live partly in log and server config, so
// a config that drops them loses them.
func TestShippedCaddyfilesGuardLogs(t *testing.T) {
	files := map[string]string{}
	for _, p := range []string{"../Caddyfile.example", "../Caddyfile.production"} {
		if b, err := os.ReadFile(p); err == nil {
			files[filepath.Base(p)] = string(b)
		} else if filepath.Base(p) == "Caddyfile.example" {
			t.Fatal(err)
		}
	}
	files["kubernetes/configmap.yaml"] = loadK8s(t)["ConfigMap"].Data["Caddyfile"]
	for k, v := range guardEnv {
		t.Setenv(k, v)
	}
	for name, src := range files {
		t.Run(name, func(t *testing.T) {
			cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": name})
			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			var cfg struct {
				Logging struct {
					Logs map[string]struct {
						Encoder struct {
							Format string `json:"format"`
							Fields map[string]struct {
								Filter string `json:"filter"`
								Regexp string `json:"regexp"`
							} `json:"fields"`
						} `json:"encoder"`
					} `json:"logs"`
				} `json:"logging"`
				Apps struct {
					HTTP struct {
						Servers map[string]struct {
							ReadHeader int64 `json:"read_header_timeout"`
							Read       int64 `json:"read_timeout"`
							Idle       int64 `json:"idle_timeout"`
						} `json:"servers"`
					} `json:"http"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
				t.Fatal(err)
			}
			if len(cfg.Logging.Logs) == 0 {
				t.Fatal("no logs configured: Caddy's defaults log the query and the proof")
			}
			for logName, l := range cfg.Logging.Logs {
				if l.Encoder.Format != "filter" {
					t.Errorf("log %s: encoder %q, want a filter", logName, l.Encoder.Format)
					continue
				}
				f := l.Encoder.Fields
				for _, h := range []string{"request>headers>Dpop", "request>headers>X-Helseid-Hpr-Number"} {
					if f[h].Filter != "delete" {
						t.Errorf("log %s: %s is not deleted", logName, h)
					}
				}
				uris := []string{"request>uri"}
				if logName == "default" {
					uris = append(uris, "uri") // the rewrite's debug line
				}
				for _, u := range uris {
					re, err := regexp.Compile(f[u].Regexp)
					if f[u].Filter != "regexp" || err != nil || !re.MatchString("?ACCESS_TOKEN=x") || re.MatchString("/kjernejournal/api") {
						t.Errorf("log %s: %s does not cut the query string (filter %q, regexp %q)", logName, u, f[u].Filter, f[u].Regexp)
					}
				}
			}
			for srvName, s := range cfg.Apps.HTTP.Servers {
				if s.ReadHeader <= 0 || s.Read <= 0 || s.Idle <= 0 {
					t.Errorf("server %s: timeouts read_header %d, read_body %d, idle %d: want all set", srvName, s.ReadHeader, s.Read, s.Idle)
				}
			}
		})
	}
}
