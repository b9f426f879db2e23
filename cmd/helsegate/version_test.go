package main

import (
	"strings"
	"testing"
)

func TestAnnotateModules(t *testing.T) {
	own := map[string]bool{"http.handlers.helseid": true}
	text := "http.handlers.file_server v2.11.9\nhttp.handlers.helseid\n\n  Non-standard modules: 1\n"
	for _, tc := range []struct {
		name string
		in   string
		args []string
		want string
	}{
		{"no flags: unchanged", "http.handlers.helseid\n", nil, "http.handlers.helseid\n"},
		{"versions", text, []string{"--versions"}, "http.handlers.file_server v2.11.9\nhttp.handlers.helseid v1.2.3\n\n  Non-standard modules: 1\n"},
		{"versions and packages", "http.handlers.helseid\n", []string{"--versions", "--packages"}, "http.handlers.helseid v1.2.3 github.com/helsegate/helsegate\n"},
		{"json", `[{"module_name":"http.handlers.helseid","module_type":"non-standard"},{"module_name":"x","module_type":"standard"}]`, []string{"--json"},
			`"version": "v1.2.3"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(annotateModules([]byte(tc.in), own, tc.args, "v1.2.3"))
			if tc.name == "json" {
				if !strings.Contains(got, tc.want) || strings.Count(got, `"version"`) != 1 {
					t.Errorf("got %s", got)
				}
				return
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
