# helsegate: Caddy with the helseid handler.
GO      ?= go
BIN     := bin/helsegate

.PHONY: build run demo test bench fmt vet clean

build:
	$(GO) build -o $(BIN) ./cmd/helsegate

# Runs the gateway on Caddyfile.example with a HelseID simulator, a registry
# simulator and a stand-in upstream, on loopback (no Redis needed).
run: build
	./$(BIN) dev --config Caddyfile.example

# A scripted tour against `make run` (in another terminal).
demo: build
	BIN=./$(BIN) ./scripts/demo

# Every test: unit, Caddyfile, fuzz seeds and the end-to-end tests against the
# built binary and real Redis (HELSEGATE_TEST_REDIS, default 127.0.0.1:6379).
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./authz/ ./cache/ ./caddymodule/

fmt:
	gofmt -l -w .

clean:
	rm -rf bin
