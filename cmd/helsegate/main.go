// Command helsegate is Caddy with its standard modules and the helseid handler.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/helsegate/helsegate/caddymodule"
)

func main() {
	caddycmd.Main()
}
