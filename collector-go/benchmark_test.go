// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processorhelper"
	"go.opentelemetry.io/collector/processor/processortest"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

// BenchmarkConsumeTraces measures the whole processor (processorhelper, key lookup, the engine
// call, removing dropped spans, annotating kept ones) on a trained model with the default
// settings and one rule; ns/span is the number to quote. Copying each input batch is excluded.
//
//	go test -run '^$' -bench ConsumeTraces -benchtime 2000x .
//
// synthetic: three keys whose latencies differ 100x. otel-demo: the recorded OpenTelemetry demo
// traces (../data/otel-demo, 17 services, 1,044 keys), cut into batches.
func BenchmarkConsumeTraces(b *testing.B) {
	for _, size := range []int{64, 1024, 8192} {
		b.Run(fmt.Sprintf("synthetic/batch=%d", size), func(b *testing.B) {
			w := newWorkload(1)
			var train []ptrace.Traces
			for range 20 {
				train = append(train, makeTraces(w.batch(512)...))
			}
			inputs := make([]ptrace.Traces, 16)
			for i := range inputs {
				inputs[i] = makeTraces(w.batch(size)...)
			}
			benchConsume(b, train, inputs, size)
		})
	}
	b.Run("passthrough/batch=1024", func(b *testing.B) {
		// The same processorhelper plumbing with an identity function: the floor.
		w := newWorkload(1)
		inputs := []ptrace.Traces{makeTraces(w.batch(1024)...)}
		benchWith(b, nil, inputs, func() (processor.Traces, error) {
			return processorhelper.NewTraces(context.Background(), processortest.NewNopSettings(metadata.Type), createDefaultConfig(), consumertest.NewNop(),
				func(_ context.Context, td ptrace.Traces) (ptrace.Traces, error) { return td, nil },
				processorhelper.WithCapabilities(consumer.Capabilities{MutatesData: true}))
		})
	})
	demo := otelDemoBatches(b, 1024)
	if len(demo) > 8 {
		b.Run("otel-demo/batch=1024", func(b *testing.B) {
			benchConsume(b, demo[:len(demo)/2], demo[len(demo)/2:], 1024)
		})
	}
}

func benchConsume(b *testing.B, train, inputs []ptrace.Traces, _ int) {
	benchWith(b, train, inputs, func() (processor.Traces, error) {
		cfg := createDefaultConfig().(*Config)
		cfg.Rules = []map[string]any{decisionRule()}
		return newTracesProcessor(context.Background(), processortest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
	})
}

func benchWith(b *testing.B, train, inputs []ptrace.Traces, create func() (processor.Traces, error)) {
	proc, err := create()
	if err != nil {
		b.Fatal(err)
	}
	if err := proc.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = proc.Shutdown(context.Background()) }()
	for _, td := range train {
		c := ptrace.NewTraces()
		td.CopyTo(c)
		_ = proc.ConsumeTraces(context.Background(), c)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var elapsed time.Duration
	spans := 0
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		td := ptrace.NewTraces()
		in := inputs[i%len(inputs)]
		in.CopyTo(td)
		spans += in.SpanCount()
		b.StartTimer()
		start := time.Now()
		if err := proc.ConsumeTraces(context.Background(), td); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(spans), "ns/span")
}

// otelDemoBatches reads ../data/otel-demo/traces.jsonl.gz into batches of about size spans.
func otelDemoBatches(b *testing.B, size int) []ptrace.Traces {
	f, err := os.Open(filepath.Join("..", "data", "otel-demo", "traces.jsonl.gz"))
	if err != nil {
		b.Logf("otel-demo data not found: %v", err)
		return nil
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var u ptrace.JSONUnmarshaler
	var out []ptrace.Traces
	cur := ptrace.NewTraces()
	for sc.Scan() {
		td, err := u.UnmarshalTraces(sc.Bytes())
		if err != nil {
			b.Fatal(err)
		}
		td.ResourceSpans().MoveAndAppendTo(cur.ResourceSpans())
		if cur.SpanCount() >= size {
			out = append(out, cur)
			cur = ptrace.NewTraces()
		}
	}
	return out
}
