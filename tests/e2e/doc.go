// Package e2e holds the end-to-end test of otelcol-scale against real OTLP clients
// (telemetrygen, and recorded OpenTelemetry demo traces replayed over OTLP/HTTP JSON).
// Its one dependency is KEDA's external scaler client (TestKedaExternalScaler). See README.md.
package e2e
