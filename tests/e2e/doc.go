// Package e2e holds the end-to-end test of otelcol-scale against real OTLP clients
// (telemetrygen, and recorded OpenTelemetry demo traces replayed over OTLP/HTTP JSON).
// It has no dependencies outside the standard library. See README.md.
package e2e
