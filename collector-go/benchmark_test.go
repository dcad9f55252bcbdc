// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
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
// synthetic: three keys whose latencies differ 100x (a resource per run of one service's spans).
// telemetrygen: requests as telemetrygen sends them (one resource of 512 spans, 21 span names,
// fixed durations: what scripts/bench-collector.sh sends). otel-demo: the recorded OpenTelemetry
// demo traces (../data/otel-demo, 17 services, 1,044 keys), cut into batches. go-side/...: the
// same inputs with libscale replaced by a fake engine (the processor's own Go work).
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
	// telemetrygen's shape (what scripts/bench-collector.sh sends): one resource and scope per
	// request, 21 span names per service, fixed durations.
	tgen := func() (train, inputs []ptrace.Traces) {
		for i := range 40 {
			train = append(train, telemetrygenTraces(i%2, 512))
		}
		for i := range 16 {
			inputs = append(inputs, telemetrygenTraces(i%2, 512))
		}
		return train, inputs
	}
	b.Run("telemetrygen/batch=512", func(b *testing.B) {
		train, inputs := tgen()
		benchConsume(b, train, inputs, 512)
	})
	// The processor's Go side alone: the engine is a fake that keeps one span in 50 (about
	// what the real one keeps here), so this is key look-up, copying into the flat arrays,
	// removing and annotating spans, and telemetry.
	b.Run("go-side/telemetrygen/batch=512", func(b *testing.B) {
		_, inputs := tgen()
		benchGoSide(b, inputs)
	})
	b.Run("go-side/synthetic/batch=1024", func(b *testing.B) {
		w := newWorkload(1)
		inputs := make([]ptrace.Traces, 16)
		for i := range inputs {
			inputs[i] = makeTraces(w.batch(1024)...)
		}
		benchGoSide(b, inputs)
	})
	demo := otelDemoBatches(b, 1024)
	if len(demo) > 8 {
		b.Run("otel-demo/batch=1024", func(b *testing.B) {
			benchConsume(b, demo[:len(demo)/2], demo[len(demo)/2:], 1024)
		})
		b.Run("go-side/otel-demo/batch=1024", func(b *testing.B) {
			benchGoSide(b, demo[len(demo)/2:])
		})
	}
}

// keepEveryEngine is a fake engine that scores every span 0.99 and keeps one in every, with
// no decisions: the processor's own cost without libscale's.
type keepEveryEngine struct{ every int }

func (keepEveryEngine) intern(string, string) (uint32, error) { return 1, nil }
func (e keepEveryEngine) process(_ uint64, b *batch) (int, error) {
	for i := range b.keyIDs {
		b.scores[i] = 0.99
		b.keep[i] = 0
		if i%e.every == 0 {
			b.keep[i] = 1
		}
		b.skip[i] = 0
	}
	return 0, nil
}
func (keepEveryEngine) ruleNames() ([]string, error)             { return []string{"rule"}, nil }
func (keepEveryEngine) ruleReports(uint64) ([]ruleReport, error) { return nil, nil }
func (keepEveryEngine) snapshotToFile(string) error              { return nil }
func (keepEveryEngine) Close()                                   {}

func benchGoSide(b *testing.B, inputs []ptrace.Traces) {
	fake := engineFactory{
		create:  func(engineSpec) (engine, error) { return keepEveryEngine{every: 50}, nil },
		restore: func(engineSpec, string) (engine, error) { return keepEveryEngine{every: 50}, nil },
	}
	benchWith(b, nil, inputs, func() (processor.Traces, error) {
		return newTracesProcessor(context.Background(), processortest.NewNopSettings(metadata.Type), createDefaultConfig().(*Config), consumertest.NewNop(), withEngineFactory(fake))
	})
}

// telemetrygenTraces builds one request as `telemetrygen traces --child-spans 20
// --span-duration (service+1)ms` sends it: one resource (service bench-<service>) and scope,
// n spans of traces made of a `lets-go` client span and 20 `okey-dokey-<j>` server spans.
func telemetrygenTraces(service, n int) ptrace.Traces {
	const children = 20
	d := time.Duration(service+1) * time.Millisecond
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", fmt.Sprintf("bench-%d", service))
	rs.Resource().Attributes().PutStr("telemetry.sdk.language", "go")
	ss := rs.ScopeSpans().AppendEmpty()
	ss.Scope().SetName("telemetrygen")
	spans := ss.Spans()
	var tid pcommon.TraceID
	var parent pcommon.SpanID
	for i := 0; spans.Len() < n; i = (i + 1) % (children + 1) {
		sp := spans.AppendEmpty()
		id := idCounter.Add(1)
		var sid pcommon.SpanID
		binary.BigEndian.PutUint64(sid[:], id)
		sp.SetSpanID(sid)
		sp.Attributes().PutStr("network.peer.address", "1.2.3.4")
		start := t0.Add(time.Duration(id) * time.Microsecond)
		if i == 0 {
			binary.BigEndian.PutUint64(tid[8:], id)
			parent = sid
			sp.SetName("lets-go")
			sp.SetKind(ptrace.SpanKindClient)
			sp.Attributes().PutStr("peer.service", "telemetrygen-server")
			sp.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
			sp.SetEndTimestamp(pcommon.NewTimestampFromTime(start.Add(children * d)))
		} else {
			sp.SetParentSpanID(parent)
			sp.SetName(fmt.Sprintf("okey-dokey-%d", i-1))
			sp.SetKind(ptrace.SpanKindServer)
			sp.Attributes().PutStr("peer.service", "telemetrygen-client")
			sp.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
			sp.SetEndTimestamp(pcommon.NewTimestampFromTime(start.Add(d)))
		}
		sp.SetTraceID(tid)
	}
	return td
}

func benchConsume(b *testing.B, train, inputs []ptrace.Traces, _ int) {
	benchWith(b, train, inputs, func() (processor.Traces, error) {
		cfg := createDefaultConfig().(*Config)
		cfg.Rules = []map[string]any{decisionRule()}
		return newTracesProcessor(context.Background(), processortest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
	})
}

// benchHooks run before the timed loop and after it (with the batches, spans and time measured).
type benchHooks struct {
	before func()
	after  func(batches, spans int, elapsed time.Duration)
}

// benchWith runs the benchmark loop on the processor create makes, trained on train.
func benchWith(b *testing.B, train, inputs []ptrace.Traces, create func() (processor.Traces, error), hooks ...benchHooks) {
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
	for _, h := range hooks {
		h.before()
	}
	b.ResetTimer()
	var elapsed time.Duration
	spans, batches := 0, 0
	for i := 0; b.Loop(); i++ {
		batches++
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
	for _, h := range hooks {
		h.after(batches, spans, elapsed)
	}
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
