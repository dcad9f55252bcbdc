// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/processor/processortest"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

// FuzzConsumeTraces feeds OTLP JSON into a started processor (a model that scores at once and
// a rule that fires often): it must never panic or fail, and never forward more spans than it
// got. Seeds: OpenTelemetry demo traces (testdata/otel-demo/, lines of
// data/otel-demo/traces.jsonl.gz). Run longer with
// `go test -run '^$' -fuzz FuzzConsumeTraces -fuzztime 60s`.
func FuzzConsumeTraces(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "otel-demo", "*.json"))
	require.NoError(f, err)
	require.NotEmpty(f, seeds)
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","startTimeUnixNano":"5","endTimeUnixNano":"1"}]}]}]}`))

	cfg := createDefaultConfig().(*Config)
	cfg.Sampler.WindowSize = 4
	cfg.Sampler.TrainSize = 0
	cfg.Keys.MaxKeys = 16
	rule := decisionRule()
	rule["match"] = map[string]any{"service": "*", "operation": "*"}
	rule["when"] = map[string]any{"duration_above": "1us"}
	rule["count"] = 2
	cfg.Rules = []map[string]any{rule}
	sink := new(consumertest.TracesSink)
	proc, err := newTracesProcessor(context.Background(), processortest.NewNopSettings(metadata.Type), cfg, sink)
	require.NoError(f, err)
	require.NoError(f, proc.Start(context.Background(), componenttest.NewNopHost()))
	f.Cleanup(func() { require.NoError(f, proc.Shutdown(context.Background())) })

	var unmarshaler ptrace.JSONUnmarshaler
	f.Fuzz(func(t *testing.T, data []byte) {
		td, err := unmarshaler.UnmarshalTraces(data)
		if err != nil {
			return
		}
		in := td.SpanCount()
		sink.Reset()
		require.NoError(t, proc.ConsumeTraces(context.Background(), td))
		require.LessOrEqual(t, sink.SpanCount(), in)
	})
}
