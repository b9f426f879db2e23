package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthURL(t *testing.T) {
	t.Setenv("HELSEGATE_ADMIN", "")
	for in, want := range map[string]string{
		"":                       "http://localhost:2019/helseid/health",
		"127.0.0.1:2999":         "http://127.0.0.1:2999/helseid/health",
		"http://127.0.0.1:2999/": "http://127.0.0.1:2999/helseid/health",
	} {
		if got := healthURL(in); got != want {
			t.Errorf("healthURL(%q) = %q, want %q", in, got, want)
		}
	}
	t.Setenv("HELSEGATE_ADMIN", "localhost:3019")
	if got := healthURL(""); got != "http://localhost:3019/helseid/health" {
		t.Errorf("from HELSEGATE_ADMIN: %q", got)
	}
}

func TestRunHealth(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/helseid/health" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"status":"x"}`))
	}))
	defer srv.Close()
	url := healthURL(srv.URL)

	var out bytes.Buffer
	if code, err := runHealth(context.Background(), &out, url, time.Second); code != 0 || err != nil || !strings.Contains(out.String(), `{"status":"x"}`) {
		t.Errorf("200: exit %d, %v\n%s", code, err, out.String())
	}
	status = http.StatusServiceUnavailable
	if code, _ := runHealth(context.Background(), &out, url, time.Second); code != 1 {
		t.Errorf("503: exit %d, want 1", code)
	}
	srv.Close()
	if code, err := runHealth(context.Background(), &out, url, time.Second); code != 1 || err == nil {
		t.Errorf("no answer: exit %d, %v", code, err)
	}
}
