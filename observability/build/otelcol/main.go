// Program otelcol-lab is the OpenTelemetry Collector the lab's tests run:
// the same release as the otel/opentelemetry-collector-contrib image that
// observability/compose.yaml pins, built with only the components below, the
// way the OpenTelemetry Collector Builder (ocb) lays out its generated main.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/otelcol"
)

// version is the collector release of the modules in go.mod; build.sh sets
// it from there (-ldflags -X) after checking that compose.yaml's image tag
// names the same release.
var version = "unknown"

func main() {
	info := component.BuildInfo{
		Command:     "otelcol-lab",
		Description: "OpenTelemetry Collector with the components of observability/otel-collector.yaml",
		Version:     version,
	}
	set := otelcol.CollectorSettings{
		BuildInfo: info,
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
				},
			},
		},
	}
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		log.Fatalf("collector server run finished with error: %v", err)
	}
}
