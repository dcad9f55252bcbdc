// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadatatest"
)

// t0 is the tests' start of time (spans and the rules' clock).
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock is the rules' clock in tests: it moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// harness is a started processor with a sink, telemetry and observed logs.
type harness struct {
	t     *testing.T
	tt    *componenttest.Telemetry
	sink  *consumertest.TracesSink
	proc  processor.Traces
	logs  *observer.ObservedLogs
	clock *fakeClock
	sp    *scaleProcessor // the processor behind processorhelper
}

func newHarness(t *testing.T, cfg *Config, opts ...option) *harness {
	t.Helper()
	h := newUnstarted(t, cfg, opts...)
	require.NoError(t, h.proc.Start(context.Background(), componenttest.NewNopHost()))
	return h
}

func newUnstarted(t *testing.T, cfg *Config, opts ...option) *harness {
	t.Helper()
	require.NoError(t, cfg.Validate())
	h := &harness{t: t, tt: componenttest.NewTelemetry(), sink: new(consumertest.TracesSink), clock: &fakeClock{now: t0}}
	set := metadatatest.NewSettings(h.tt)
	core, logs := observer.New(zap.DebugLevel)
	set.Logger = zap.New(core)
	h.logs = logs
	opts = append([]option{withClock(h.clock.Now), func(p *scaleProcessor) { h.sp = p }}, opts...)
	proc, err := newTracesProcessor(context.Background(), set, cfg, h.sink, opts...)
	require.NoError(t, err)
	h.proc = proc
	t.Cleanup(func() {
		_ = proc.Shutdown(context.Background()) // idempotent; tests that shut down check the error

		require.NoError(t, h.tt.Shutdown(context.Background()))
	})
	return h
}

// consume sends td and returns what reached the sink from it (a fresh sink view).
func (h *harness) consume(td ptrace.Traces) []ptrace.Span {
	h.t.Helper()
	before := len(h.sink.AllTraces())
	require.NoError(h.t, h.proc.ConsumeTraces(context.Background(), td))
	var out []ptrace.Span
	for _, got := range h.sink.AllTraces()[before:] {
		out = append(out, allSpans(got)...)
	}
	return out
}

// counter sums an int counter's data points whose attributes include attrs; 0 if never recorded.
func (h *harness) counter(name string, attrs ...attribute.KeyValue) int64 {
	h.t.Helper()
	m, err := h.tt.GetMetric("otelcol_" + name)
	if err != nil {
		return 0
	}
	var total int64
	for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
		ok := true
		for _, a := range attrs {
			if v, has := dp.Attributes.Value(a.Key); !has || v != a.Value {
				ok = false
			}
		}
		if ok {
			total += dp.Value
		}
	}
	return total
}

func allSpans(td ptrace.Traces) []ptrace.Span {
	var out []ptrace.Span
	rss := td.ResourceSpans()
	for i := 0; i < rss.Len(); i++ {
		sss := rss.At(i).ScopeSpans()
		for j := 0; j < sss.Len(); j++ {
			spans := sss.At(j).Spans()
			for k := 0; k < spans.Len(); k++ {
				out = append(out, spans.At(k))
			}
		}
	}
	return out
}

// spanSpec is one span to generate.
type spanSpec struct {
	service, op string
	start       time.Time
	dur         time.Duration
	// raw timestamps override start/dur when set (bad spans).
	rawStart, rawEnd *uint64
}

var idCounter atomic.Uint64

// makeTraces builds one batch: a resource per run of spans with the same service.
func makeTraces(specs ...spanSpec) ptrace.Traces {
	td := ptrace.NewTraces()
	var spans ptrace.SpanSlice
	last := "\x00none"
	for _, s := range specs {
		if s.service != last {
			rs := td.ResourceSpans().AppendEmpty()
			rs.Resource().Attributes().PutStr("service.name", s.service)
			spans = rs.ScopeSpans().AppendEmpty().Spans()
			last = s.service
		}
		span := spans.AppendEmpty()
		span.SetName(s.op)
		id := idCounter.Add(1)
		var tid pcommon.TraceID
		var sid pcommon.SpanID
		binary.BigEndian.PutUint64(tid[8:], id)
		binary.BigEndian.PutUint64(sid[:], id)
		span.SetTraceID(tid)
		span.SetSpanID(sid)
		start := uint64(s.start.UnixNano())
		end := start + uint64(s.dur.Nanoseconds())
		if s.rawStart != nil {
			start = *s.rawStart
		}
		if s.rawEnd != nil {
			end = *s.rawEnd
		}
		span.SetStartTimestamp(pcommon.Timestamp(start))
		span.SetEndTimestamp(pcommon.Timestamp(end))
	}
	return td
}

// workload generates normal traffic: three services whose operations differ by 100x in latency.
type workload struct {
	rng  *rand.Rand
	next time.Time
}

func newWorkload(seed uint64) *workload {
	return &workload{rng: rand.New(rand.NewPCG(seed, 1)), next: t0}
}

var normalKeys = []struct {
	service, op string
	base        time.Duration
}{
	{"frontend", "GET /api/cart", 5 * time.Millisecond},
	{"checkout", "oteldemo.CheckoutService/PlaceOrder", 50 * time.Millisecond},
	{"product-catalog", "oteldemo.ProductCatalogService/ListProducts", 500 * time.Millisecond},
}

// batch returns n normal spans (durations within ±20% of their key's base).
func (w *workload) batch(n int) []spanSpec {
	out := make([]spanSpec, 0, n)
	for range n {
		k := normalKeys[w.rng.IntN(len(normalKeys))]
		jitter := 0.8 + 0.4*w.rng.Float64()
		out = append(out, spanSpec{service: k.service, op: k.op, start: w.next, dur: time.Duration(float64(k.base) * jitter)})
		w.next = w.next.Add(time.Millisecond)
	}
	return out
}

// smallConfig: a model that trains on 600 spans.
func smallConfig() *Config {
	cfg := createDefaultConfig().(*Config)
	cfg.Sampler.WindowSize = 100
	cfg.Sampler.TrainSize = 600
	return cfg
}

func ptrU64(v uint64) *uint64 { return &v }

// countingEngine wraps an engine and counts the calls the processor makes.
type countingEngine struct {
	engine
	interns, processes atomic.Int64
}

func (c *countingEngine) intern(s, o string) (uint32, error) {
	c.interns.Add(1)
	return c.engine.intern(s, o)
}

func (c *countingEngine) process(now uint64, b *batch) (int, error) {
	c.processes.Add(1)
	return c.engine.process(now, b)
}

// fakeEngine fails as told (fail-open tests).
type fakeEngine struct {
	err    error
	closed atomic.Bool
}

func (f *fakeEngine) intern(string, string) (uint32, error)    { return 0, nil }
func (f *fakeEngine) process(uint64, *batch) (int, error)      { return 0, f.err }
func (f *fakeEngine) ruleNames() ([]string, error)             { return nil, nil }
func (f *fakeEngine) ruleReports(uint64) ([]ruleReport, error) { return nil, f.err }
func (f *fakeEngine) snapshotToFile(string) error              { return f.err }
func (f *fakeEngine) Close()                                   { f.closed.Store(true) }
