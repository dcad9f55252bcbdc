// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build cgo

package scaleprocessor

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processortest"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

// chunkedFactory is libscale with chunkSpans spans per engine call (0: one call per batch).
func chunkedFactory(chunkSpans int) engineFactory {
	set := func(e *nativeEngine, err error) (engine, error) {
		if err != nil {
			return nil, err
		}
		e.chunkSpans = chunkSpans
		return e, nil
	}
	return engineFactory{
		create:  func(spec engineSpec) (engine, error) { return set(newNativeEngine(spec)) },
		restore: func(spec engineSpec, path string) (engine, error) { return set(restoreNativeEngine(spec, path)) },
	}
}

// chunkRules: two rules share a target (their decisions of one batch are conflated into one),
// one has its own; count 1 fires on every breach, so one batch carries many decisions.
func chunkRules() []map[string]any {
	rule := func(name, service string, threshold string, target string) map[string]any {
		return map[string]any{
			"name":   name,
			"match":  map[string]any{"service": service},
			"when":   map[string]any{"duration_above": threshold},
			"count":  1,
			"window": "1m",
			"action": map[string]any{"kind": "horizontal", "target": map[string]any{"kind": "Deployment", "name": target}, "max": 5},
		}
	}
	return []map[string]any{
		rule("checkout-slow", "checkout", "100ms", "shop"),
		rule("catalog-slow", "product-catalog", "800ms", "shop"),
		rule("frontend-slow", "frontend", "50ms", "frontend"),
	}
}

// TestChunkedEqualsOneCallPerBatch: batches larger than a chunk give the same forwarded spans
// (kept spans, scores, decision events with their conflated counts) and the same counters as
// one engine call per batch.
func TestChunkedEqualsOneCallPerBatch(t *testing.T) {
	cfg := smallConfig()
	cfg.Rules = chunkRules()
	whole := newHarness(t, cfg, withEngineFactory(chunkedFactory(0)))
	chunked := newHarness(t, cfg, withEngineFactory(chunkedFactory(7)))
	byDefault := newHarness(t, cfg, withEngineFactory(chunkedFactory(defaultChunkSpans)))
	w := newWorkload(21)
	var events, conflated, lateEvents int
	for i, n := range []int{512, 512, 1, 7, 8, 64, 300, 1024, 33, 512, 512} {
		specs := w.batch(n)
		// Slow spans spread over the batch: anomalies to keep, and breaches of every rule.
		for j := i % 5; j < n; j += 37 {
			specs[j].dur *= 10
		}
		td := makeTraces(specs...)
		var want string
		for k, h := range []*harness{whole, chunked, byDefault} {
			h.clock.Advance(time.Second)
			in := ptrace.NewTraces()
			td.CopyTo(in)
			got := marshalSpans(t, h.consume(in))
			if k == 0 {
				want = got
				continue
			}
			require.Equal(t, want, got, "batch %d (%d spans), harness %d", i, n, k)
		}
		for _, s := range allSpans(whole.sink.AllTraces()[len(whole.sink.AllTraces())-1]) {
			for e := 0; e < s.Events().Len(); e++ {
				events++
				if c, _ := s.Events().At(e).Attributes().Get(AttrConflated); c.Int() > 0 {
					conflated++
				}
				if n > defaultChunkSpans {
					lateEvents++
				}
			}
		}
	}
	assert.Positive(t, conflated, "decisions conflated across chunks")
	assert.Positive(t, lateEvents, "decision events in batches of several chunks")
	assert.Greater(t, events, conflated)
	for _, m := range []string{"processor_scale_spans_scored", "processor_scale_spans_kept", "processor_scale_spans_dropped", "processor_scale_decisions"} {
		assert.Equal(t, whole.counter(m), chunked.counter(m), m)
		assert.Equal(t, whole.counter(m), byDefault.counter(m), m)
	}
	assert.Positive(t, whole.counter("processor_scale_spans_kept"))
	assert.Zero(t, chunked.counter("processor_scale_engine_errors"))
}

// TestChunkedAnnotateEqualsOneCallPerBatch: in annotate-only mode (the keep budget counted in
// traces), the spans the engine marks only at a batch's end (the first spans of an onset that
// showed later in the batch, in an earlier chunk: scale_batch_out.late_keep) are marked as if
// the batch had been one call.
func TestChunkedAnnotateEqualsOneCallPerBatch(t *testing.T) {
	cfg := smallConfig()
	cfg.Drop = false
	cfg.Sampler.KeepBudget = 0.001
	whole := newHarness(t, cfg, withEngineFactory(chunkedFactory(0)))
	chunked := newHarness(t, cfg, withEngineFactory(chunkedFactory(7)))
	// Log-normal latencies (sigma 0.3) around each key's base; in the last batch the frontend
	// takes 2.2 times its base from the 20th span on: rare (2.6 sigma), but not so rare that
	// one such span alone is marked.
	rng := rand.New(rand.NewPCG(22, 1))
	next := t0
	var anomalous, lateFirst int
	for i := range 16 {
		specs := make([]spanSpec, 512)
		for j := range specs {
			k := normalKeys[rng.IntN(len(normalKeys))]
			d := float64(k.base) * math.Exp(0.3*rng.NormFloat64())
			if i == 15 && j >= 20 && k.service == "frontend" {
				d = 2.2 * float64(k.base)
			}
			specs[j] = spanSpec{service: k.service, op: k.op, start: next, dur: time.Duration(d)}
			next = next.Add(time.Millisecond)
		}
		td := makeTraces(specs...)
		var want string
		for k, h := range []*harness{whole, chunked} {
			h.clock.Advance(time.Second)
			in := ptrace.NewTraces()
			td.CopyTo(in)
			out := h.consume(in)
			got := marshalSpans(t, out)
			if k == 0 {
				want = got
				continue
			}
			require.Equal(t, want, got, "batch %d", i)
			if i == 15 {
				// The first slow frontend spans (21 and 22, in the 4th chunk; the onset shows at
				// the third, 27, in the 5th), marked at the batch's end.
				for j, s := range out {
					if v, _ := s.Attributes().Get(AttrAnomalous); v.Bool() {
						anomalous++
						if j >= 20 && j < 23 && s.Name() == normalKeys[0].op {
							lateFirst++
						}
					}
				}
			}
		}
	}
	assert.Positive(t, anomalous)
	assert.Positive(t, lateFirst, "the onset's first spans are marked")
	assert.Zero(t, chunked.counter("processor_scale_engine_errors"))
}

// marshalSpans is the forwarded spans as OTLP JSON, one span per resource (what a batch's
// output is made of, independent of how it was grouped).
func marshalSpans(t *testing.T, spans []ptrace.Span) string {
	t.Helper()
	td := ptrace.NewTraces()
	for _, s := range spans {
		s.CopyTo(td.ResourceSpans().AppendEmpty().ScopeSpans().AppendEmpty().Spans().AppendEmpty())
	}
	b, err := (&ptrace.JSONMarshaler{}).MarshalTraces(td)
	require.NoError(t, err)
	return string(b)
}

// TestChunkedBatchesConcurrently: batches from several goroutines never interleave their
// chunks (the engine would refuse an out-of-sequence chunk, and the batch would fail open).
func TestChunkedBatchesConcurrently(t *testing.T) {
	cfg := smallConfig()
	cfg.Rules = chunkRules()
	h := newHarness(t, cfg, withEngineFactory(chunkedFactory(5)))
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			w := newWorkload(uint64(300 + g))
			for range 30 {
				_ = h.proc.ConsumeTraces(context.Background(), makeTraces(w.batch(64)...))
			}
		}()
	}
	for range 4 {
		<-done
	}
	assert.Zero(t, h.counter("processor_scale_engine_errors"))
	assert.Equal(t, int64(4*30*64), h.counter("processor_scale_spans_scored"))
}

// BenchmarkChunkSpans: the whole processor on telemetrygen-shaped 512-span batches (as
// BenchmarkConsumeTraces' telemetrygen/batch=512) with chunkSpans spans per engine call (0: one
// call per batch), reporting ns per span and the process's context switches per batch
// (getrusage), voluntary and involuntary. Run with -cpu 1 to see what one P does (as in the
// collector benchmark's pinned runs):
//
//	go test -run '^$' -bench ChunkSpans -benchtime 3000x -cpu 1 .
func BenchmarkChunkSpans(b *testing.B) {
	var train, inputs []ptrace.Traces
	for i := range 40 {
		train = append(train, telemetrygenTraces(i%2, 512))
	}
	for i := range 16 {
		inputs = append(inputs, telemetrygenTraces(i%2, 512))
	}
	for _, chunk := range []int{0, 16, 32, 64, 128} {
		b.Run(fmt.Sprintf("chunk=%d", chunk), func(b *testing.B) {
			var ru0, ru1 syscall.Rusage
			benchWith(b, train, inputs, func() (processor.Traces, error) {
				cfg := createDefaultConfig().(*Config)
				cfg.Rules = []map[string]any{decisionRule()}
				return newTracesProcessor(context.Background(), processortest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop(),
					withEngineFactory(chunkedFactory(chunk)))
			}, benchHooks{
				before: func() { _ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0) },
				after: func(batches, _ int, _ time.Duration) {
					_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
					// Voluntary: the runtime's threads sleeping and waking (handing the P over);
					// involuntary: preempted by the kernel (other processes on a shared machine).
					b.ReportMetric(float64(ru1.Nvcsw-ru0.Nvcsw)/float64(batches), "vcsw/batch")
					b.ReportMetric(float64(ru1.Nivcsw-ru0.Nivcsw)/float64(batches), "ivcsw/batch")
				},
			})
		})
	}
}
