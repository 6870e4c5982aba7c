// Caddy with its standard modules, built from its Go module at the version
// go.mod pins: the traced reverse proxy bench/bench.py runs beside service-b.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
