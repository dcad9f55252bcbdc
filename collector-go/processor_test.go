// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/processor/processortest"
	"go.opentelemetry.io/otel/attribute"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	newProc := func(t *testing.T) *harness { return newUnstarted(t, smallConfig()) }

	t.Run("start-shutdown", func(t *testing.T) {
		h := newProc(t)
		require.NoError(t, h.proc.Start(ctx, componenttest.NewNopHost()))
		require.NoError(t, h.proc.Shutdown(ctx))
	})
	t.Run("shutdown-without-start", func(t *testing.T) {
		h := newProc(t)
		require.NoError(t, h.proc.Shutdown(ctx))
	})
	t.Run("double-shutdown", func(t *testing.T) {
		h := newProc(t)
		require.NoError(t, h.proc.Start(ctx, componenttest.NewNopHost()))
		require.NoError(t, h.proc.Shutdown(ctx))
		require.NoError(t, h.proc.Shutdown(ctx))
	})
	t.Run("consume-before-start-and-after-shutdown-passes-through", func(t *testing.T) {
		h := newProc(t)
		w := newWorkload(1)
		assert.Len(t, h.consume(makeTraces(w.batch(10)...)), 10)
		require.NoError(t, h.proc.Start(ctx, componenttest.NewNopHost()))
		require.NoError(t, h.proc.Shutdown(ctx))
		assert.Len(t, h.consume(makeTraces(w.batch(10)...)), 10, "a closed engine fails open")
	})
	t.Run("bad-rules-fail-start", func(t *testing.T) {
		cfg := smallConfig()
		rule := decisionRule()
		rule["count"] = 0
		cfg.Rules = []map[string]any{rule}
		set := processortest.NewNopSettings(metadata.Type)
		p, err := newTracesProcessor(ctx, set, cfg, consumertest.NewNop())
		require.NoError(t, err)
		err = p.Start(ctx, componenttest.NewNopHost())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "rules[0].count: must be between 1 and 1000000, got 0")
		require.NoError(t, p.Shutdown(ctx))
	})
	t.Run("shutdown-respects-deadline", func(t *testing.T) {
		h := newProc(t)
		require.NoError(t, h.proc.Start(ctx, componenttest.NewNopHost()))
		done, cancel := context.WithCancel(ctx)
		cancel()
		// Either finished already or gave up on the cancelled context; never blocks.
		if err := h.proc.Shutdown(done); err != nil {
			assert.ErrorIs(t, err, context.Canceled)
		}
	})
}

func TestNormalSpansDroppedAfterTrainingSlowSpansKept(t *testing.T) {
	h := newHarness(t, smallConfig())
	w := newWorkload(42)

	// Training: nothing is kept.
	for range 6 {
		assert.Empty(t, h.consume(makeTraces(w.batch(100)...)))
	}
	// Trained: normal spans are mostly dropped.
	normal, forwarded := 0, 0
	for range 30 {
		forwarded += len(h.consume(makeTraces(w.batch(100)...)))
		normal += 100
	}
	assert.Less(t, float64(forwarded)/float64(normal), 0.05, "kept %d of %d normal spans", forwarded, normal)

	// A slow span (10 s: 20x to 2000x its key's usual latency) amid normal ones is kept, with
	// its score.
	for _, k := range normalKeys {
		specs := w.batch(50)
		slow := spanSpec{service: k.service, op: k.op, start: w.next, dur: 10 * time.Second}
		specs = append(specs, slow)
		out := h.consume(makeTraces(specs...))
		var found bool
		for _, s := range out {
			if s.Name() == k.op && time.Duration(s.EndTimestamp()-s.StartTimestamp()) == slow.dur {
				found = true
				v, ok := s.Attributes().Get(AttrAnomalyScore)
				require.True(t, ok, "kept span has %s", AttrAnomalyScore)
				assert.Equal(t, pcommon.ValueTypeDouble, v.Type())
				assert.GreaterOrEqual(t, v.Double(), 0.925)
				assert.LessOrEqual(t, v.Double(), 1.0)
			}
		}
		assert.True(t, found, "slow %s span kept", k.service)
	}
	// Every kept span carries its score; resource spans left empty were removed.
	for _, td := range h.sink.AllTraces() {
		rss := td.ResourceSpans()
		for i := 0; i < rss.Len(); i++ {
			assert.Positive(t, rss.At(i).ScopeSpans().Len())
		}
		for _, s := range allSpans(td) {
			_, ok := s.Attributes().Get(AttrAnomalyScore)
			assert.True(t, ok)
		}
	}
	total := int64(6*100 + 30*100 + 3*51)
	assert.Equal(t, total, h.counter("processor_scale_spans_scored"))
	assert.Equal(t, total, h.counter("processor_scale_spans_kept")+h.counter("processor_scale_spans_dropped"))
	assert.Equal(t, int64(h.sink.SpanCount()), h.counter("processor_scale_spans_kept"))
	m, err := h.tt.GetMetric("otelcol_processor_scale_batch_duration")
	require.NoError(t, err)
	assert.Equal(t, "s", m.Unit)
}

func decisionRule() map[string]any {
	return map[string]any{
		"name":   "checkout-latency",
		"match":  map[string]any{"service": "checkout", "operation": "PlaceOrder"},
		"when":   map[string]any{"duration_above": "100ms"},
		"count":  3,
		"window": "1m",
		"action": map[string]any{"kind": "horizontal", "target": map[string]any{"kind": "Deployment", "namespace": "shop", "name": "checkout"}, "max": 5},
	}
}

func TestRuleFiringAddsDecisionEvent(t *testing.T) {
	cfg := smallConfig()
	cfg.Sampler.TrainSize = 1_000_000 // still training: only the decision span may be kept
	cfg.Rules = []map[string]any{decisionRule()}
	h := newHarness(t, cfg)

	breach := func(d time.Duration) []ptrace.Span {
		h.clock.Advance(time.Second)
		return h.consume(makeTraces(
			spanSpec{service: "checkout", op: "PlaceOrder", start: h.clock.Now(), dur: 10 * time.Millisecond},
			spanSpec{service: "checkout", op: "PlaceOrder", start: h.clock.Now(), dur: d},
		))
	}
	assert.Empty(t, breach(200*time.Millisecond), "first breach")
	assert.Empty(t, breach(90*time.Millisecond), "under the threshold: not a breach")
	assert.Empty(t, breach(250*time.Millisecond), "second breach")
	out := breach(300 * time.Millisecond)
	require.Len(t, out, 1, "the third breach completes the window and is kept")
	span := out[0]
	assert.Equal(t, 300*time.Millisecond, time.Duration(span.EndTimestamp()-span.StartTimestamp()))
	require.Equal(t, 1, span.Events().Len())
	ev := span.Events().At(0)
	assert.Equal(t, EventDecision, ev.Name())
	assert.Equal(t, pcommon.NewTimestampFromTime(h.clock.Now()), ev.Timestamp())
	a := ev.Attributes().AsRaw()
	assert.Equal(t, "checkout-latency", a[AttrRule])
	assert.Equal(t, "horizontal", a[AttrAction])
	assert.Equal(t, int64(3), a[AttrCount])
	assert.Equal(t, 60000.0, a[AttrWindowMs])
	assert.Equal(t, 100.0, a[AttrThresholdMs])
	assert.InDelta(t, 300.0, a[AttrObservedMs], 1e-9)
	assert.Equal(t, int64(0), a[AttrConflated])
	assert.NotContains(t, a, AttrScore, "no score while training")
	assert.NotContains(t, a, AttrLoadRatio, "not an auto rule")
	_, hasScore := span.Attributes().Get(AttrAnomalyScore)
	assert.False(t, hasScore, "kept for its decision, not scored yet")
	assert.Equal(t, int64(1), h.counter("processor_scale_decisions", attribute.String("action", "horizontal")))

	// The window starts afresh.
	assert.Empty(t, breach(300*time.Millisecond))
}

func TestDecisionFromRulesFile(t *testing.T) {
	cfg := smallConfig()
	cfg.Sampler.TrainSize = 1_000_000
	cfg.RulesFile = filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(cfg.RulesFile, []byte(`rules:
  - name: from-file
    match: { service: "check*" }
    when: { duration_above: 1ms }
    count: 2
    window: 10s
    action: { kind: vertical, target: { kind: StatefulSet, name: db }, max: 2 }
`), 0o600))
	h := newHarness(t, cfg)
	out := h.consume(makeTraces(
		spanSpec{service: "checkout", op: "a", start: t0, dur: 5 * time.Millisecond},
		spanSpec{service: "checkout", op: "b", start: t0, dur: 6 * time.Millisecond},
	))
	require.Len(t, out, 1)
	assert.Equal(t, "b", out[0].Name())
	a := out[0].Events().At(0).Attributes().AsRaw()
	assert.Equal(t, "from-file", a[AttrRule])
	assert.Equal(t, "vertical", a[AttrAction])
}

// TestRulesFileRestored: with a rules file, a restored snapshot keeps the rule windows (the
// rules file's text goes to libscale as is, next to the settings: nothing merges the two).
func TestRulesFileRestored(t *testing.T) {
	cfg := smallConfig()
	cfg.Sampler.TrainSize = 1_000_000
	cfg.SnapshotPath = filepath.Join(t.TempDir(), "model.snapshot")
	cfg.SnapshotInterval = 0
	cfg.RulesFile = filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(cfg.RulesFile, []byte(`rules:
  - name: from-file
    match: { service: checkout }
    when: { duration_above: 1ms }
    count: 3
    window: 1h
    action: { kind: horizontal, target: { kind: Deployment, name: checkout }, max: 2 }
`), 0o600))
	slow := func(op string) spanSpec {
		return spanSpec{service: "checkout", op: op, start: t0, dur: 5 * time.Millisecond}
	}
	h := newHarness(t, cfg)
	assert.Empty(t, h.consume(makeTraces(slow("a"), slow("b"))), "two breaches: no decision yet")
	require.NoError(t, h.proc.Shutdown(context.Background()))

	h2 := newHarness(t, cfg)
	require.Equal(t, 1, h2.logs.FilterMessage("Restored the model from its snapshot.").Len())
	out := h2.consume(makeTraces(slow("c")))
	require.Len(t, out, 1, "the third breach in the restored window fires")
	assert.Equal(t, "from-file", out[0].Events().At(0).Attributes().AsRaw()[AttrRule])
}

func TestBadSpansPassThroughCounted(t *testing.T) {
	cfg := smallConfig()
	cfg.Sampler.TrainSize = 0
	h := newHarness(t, cfg)
	now := uint64(t0.UnixNano())
	td := makeTraces(
		spanSpec{service: "s", op: "end-before-start", rawStart: ptrU64(now), rawEnd: ptrU64(now - 1)},
		spanSpec{service: "s", op: "zero", rawStart: ptrU64(0), rawEnd: ptrU64(now)},
		spanSpec{service: "s", op: "absurd", rawStart: ptrU64(1), rawEnd: ptrU64(2)},
		spanSpec{service: "s", op: "too-long", rawStart: ptrU64(now), rawEnd: ptrU64(now + uint64(48*time.Hour))},
		spanSpec{service: "s\xff", op: "not utf-8", start: t0, dur: time.Millisecond},
		spanSpec{service: "s", op: "max", rawStart: ptrU64(math.MaxUint64 - 1), rawEnd: ptrU64(math.MaxUint64)},
	)
	out := h.consume(td)
	names := map[string]bool{}
	for _, s := range out {
		names[s.Name()] = true
		_, scored := s.Attributes().Get(AttrAnomalyScore)
		assert.False(t, scored, "forwarded unscored")
	}
	assert.Equal(t, map[string]bool{"end-before-start": true, "zero": true, "absurd": true, "too-long": true, "not utf-8": true, "max": true}, names)
	reason := func(r string) int64 {
		return h.counter("processor_scale_spans_skipped", attribute.String("reason", r))
	}
	assert.Equal(t, int64(1), reason("end_before_start"))
	assert.Equal(t, int64(1), reason("zero_timestamp"))
	assert.Equal(t, int64(2), reason("absurd_timestamp"))
	assert.Equal(t, int64(1), reason("absurd_duration"))
	assert.Equal(t, int64(1), reason("invalid_key"))
	assert.Equal(t, int64(0), h.counter("processor_scale_engine_errors"))
	// Empty batches and batches without spans are fine.
	assert.Empty(t, h.consume(ptrace.NewTraces()))
	empty := ptrace.NewTraces()
	empty.ResourceSpans().AppendEmpty().ScopeSpans().AppendEmpty()
	require.NoError(t, h.proc.ConsumeTraces(context.Background(), empty))
}

func TestOneEngineCallPerBatch(t *testing.T) {
	var counting *countingEngine
	f := engineFactory{
		create: func(spec engineSpec) (engine, error) {
			e, err := nativeFactory.create(spec)
			if err != nil {
				return nil, err
			}
			counting = &countingEngine{engine: e}
			return counting, nil
		},
		restore: nativeFactory.restore,
	}
	h := newHarness(t, smallConfig(), withEngineFactory(f))
	w := newWorkload(7)
	for range 20 {
		h.consume(makeTraces(w.batch(64)...))
	}
	assert.Equal(t, int64(20), counting.processes.Load(), "one process call per batch")
	assert.Equal(t, int64(len(normalKeys)), counting.interns.Load(), "one intern per distinct key, then cached")
}

func TestKeyCacheBoundedByMaxKeys(t *testing.T) {
	var counting *countingEngine
	f := engineFactory{
		create: func(spec engineSpec) (engine, error) {
			e, err := nativeFactory.create(spec)
			if err != nil {
				return nil, err
			}
			counting = &countingEngine{engine: e}
			return counting, nil
		},
	}
	cfg := smallConfig()
	cfg.Keys.MaxKeys = 5
	h := newHarness(t, cfg, withEngineFactory(f))
	for i := range 40 {
		specs := make([]spanSpec, 0, 10)
		for j := range 10 {
			specs = append(specs, spanSpec{service: "s", op: string(rune('a'+(i*10+j)%26)) + string(rune('a'+i)), start: t0, dur: time.Millisecond})
		}
		h.consume(makeTraces(specs...))
	}
	run := h.procState()
	assert.Equal(t, 5, run.keys.known)
	assert.LessOrEqual(t, run.keys.overflow, overflowCacheMax)
	assert.Equal(t, int64(5), counting.interns.Load(), "past max_keys every new name is the overflow key, without a call")
}

// The key cache is keyed by (service, operation), not by a joined string: names that only a
// separator would tell apart stay two keys, and each is interned once.
func TestKeyCacheKeepsServiceAndOperationApart(t *testing.T) {
	var counting *countingEngine
	f := engineFactory{
		create: func(spec engineSpec) (engine, error) {
			e, err := nativeFactory.create(spec)
			if err != nil {
				return nil, err
			}
			counting = &countingEngine{engine: e}
			return counting, nil
		},
	}
	h := newHarness(t, smallConfig(), withEngineFactory(f))
	for range 3 {
		h.consume(makeTraces(
			spanSpec{service: "a\x00b", op: "c", start: t0, dur: time.Millisecond},
			spanSpec{service: "a", op: "b\x00c", start: t0, dur: time.Millisecond},
		))
	}
	run := h.procState()
	assert.Equal(t, 2, run.keys.known)
	assert.Equal(t, int64(2), counting.interns.Load(), "two keys, each interned once")
	a, b := run.keys.services["a\x00b"]["c"], run.keys.services["a"]["b\x00c"]
	assert.NotEqual(t, a, b)
}

// procState is the running state of the harness's processor.
func (h *harness) procState() *running {
	h.t.Helper()
	r := h.sp.running.Load()
	require.NotNil(h.t, r, "processor not running")
	return r
}

func TestFailOpenOnEngineError(t *testing.T) {
	poisoned := &Error{Code: StatusPoisoned, Status: "poisoned", Msg: "poisoned"}
	var created []*fakeEngine
	var mu sync.Mutex
	f := engineFactory{create: func(engineSpec) (engine, error) {
		mu.Lock()
		defer mu.Unlock()
		e := &fakeEngine{err: poisoned}
		created = append(created, e)
		return e, nil
	}}
	h := newHarness(t, smallConfig(), withEngineFactory(f))
	w := newWorkload(3)
	for range 5 {
		out := h.consume(makeTraces(w.batch(10)...))
		require.Len(t, out, 10, "the whole batch passes through")
		for _, s := range out {
			_, ok := s.Attributes().Get(AttrAnomalyScore)
			assert.False(t, ok, "unscored")
		}
	}
	assert.Equal(t, int64(5), h.counter("processor_scale_engine_errors", attribute.String("status", "poisoned")))
	assert.Equal(t, int64(50), h.counter("processor_scale_spans_unscored"))
	assert.Equal(t, 1, h.logs.FilterMessage("Engine call failed; the batch passes through unscored.").Len(), "logged at a limited rate")
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, created, 2, "a poisoned engine is re-created once per interval")
	assert.True(t, created[0].closed.Load())
}

func TestSnapshotWrittenOnShutdownAndRestored(t *testing.T) {
	ctx := context.Background()
	cfg := smallConfig()
	cfg.SnapshotPath = filepath.Join(t.TempDir(), "state", "model.snapshot")
	cfg.SnapshotInterval = 0

	h := newHarness(t, cfg)
	w := newWorkload(5)
	// Training, then enough spans for the keep threshold to be calibrated to the budget.
	for range 30 {
		h.consume(makeTraces(w.batch(100)...))
	}
	require.NoError(t, h.proc.Shutdown(ctx))
	info, err := os.Stat(cfg.SnapshotPath)
	require.NoError(t, err)
	assert.Positive(t, info.Size())
	assert.Equal(t, int64(1), h.counter("processor_scale_snapshots"))

	// A new processor restores it: already trained, so normal spans are dropped at once and a
	// slow one is kept.
	h2 := newHarness(t, cfg)
	assert.Equal(t, 1, h2.logs.FilterMessage("Restored the model from its snapshot.").Len())
	out := h2.consume(makeTraces(append(w.batch(50), spanSpec{service: "checkout", op: normalKeys[1].op, start: w.next, dur: 10 * time.Second})...))
	require.NotEmpty(t, out, "trained model keeps the slow span")
	assert.LessOrEqual(t, len(out), 5)

	// An incompatible snapshot (other model parameters) is logged, and the model starts fresh.
	other := *cfg
	other.Sampler.NTrees = 3
	h3 := newHarness(t, &other)
	logs := h3.logs.FilterMessage("Snapshot not restored; starting with a fresh model.")
	require.Equal(t, 1, logs.Len())
	assert.Contains(t, logs.All()[0].ContextMap()["error"], "snapshot")
	assert.Empty(t, h3.consume(makeTraces(w.batch(50)...)), "fresh model: training")

	// So is a corrupt file.
	require.NoError(t, os.WriteFile(cfg.SnapshotPath, []byte("not a snapshot"), 0o600))
	h4 := newHarness(t, cfg)
	assert.Equal(t, 1, h4.logs.FilterMessage("Snapshot not restored; starting with a fresh model.").Len())
}

// initial_snapshot: a replica without state of its own starts from the shared snapshot and
// judges spans at once; its own snapshot_path state wins once it has one; a damaged, missing
// or incompatible initial snapshot starts it cold, logged and counted, never failing the start.
func TestInitialSnapshot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	trained := smallConfig()
	trained.SnapshotPath = filepath.Join(dir, "trained.snapshot")
	trained.SnapshotInterval = 0
	h := newHarness(t, trained)
	w := newWorkload(5)
	for range 30 {
		h.consume(makeTraces(w.batch(100)...))
	}
	require.NoError(t, h.proc.Shutdown(ctx))
	slow := spanSpec{service: "checkout", op: normalKeys[1].op, dur: 10 * time.Second}
	starts := func(h *harness, source string) int64 {
		return h.counter("processor_scale_engine_starts", attribute.String("source", source))
	}

	replica := smallConfig()
	replica.SnapshotPath = filepath.Join(dir, "replica", "model.snapshot")
	replica.SnapshotInterval = 0
	replica.InitialSnapshot = trained.SnapshotPath
	h2 := newHarness(t, replica)
	assert.Equal(t, 1, h2.logs.FilterMessage("Started warm from the initial snapshot.").Len())
	assert.Equal(t, int64(1), starts(h2, sourceInitialSnapshot))
	slow.start = w.next
	out := h2.consume(makeTraces(append(w.batch(50), slow)...))
	require.NotEmpty(t, out, "warm from the first span: the slow span is kept")
	assert.LessOrEqual(t, len(out), 5)
	require.NoError(t, h2.proc.Shutdown(ctx))

	// Its own state now exists and wins.
	h3 := newHarness(t, replica)
	assert.Equal(t, 1, h3.logs.FilterMessage("Restored the model from its snapshot.").Len())
	assert.Equal(t, int64(1), starts(h3, sourceSnapshot))
	assert.Equal(t, int64(0), starts(h3, sourceInitialSnapshot))

	// Bad initial snapshots: cold, logged, counted by status.
	garbage := filepath.Join(dir, "garbage.snapshot")
	require.NoError(t, os.WriteFile(garbage, []byte("not a snapshot"), 0o600))
	other := smallConfig()
	other.Sampler.NTrees = 3
	for _, c := range []struct {
		name, path, status string
		cfg                *Config
	}{
		{"another configuration", trained.SnapshotPath, statusLabels[StatusSnapshotMismatch], other},
		{"damaged", garbage, statusLabels[StatusInvalidSnapshot], smallConfig()},
		{"missing", filepath.Join(dir, "absent.snapshot"), statusLabels[StatusIo], smallConfig()},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := *c.cfg
			cfg.InitialSnapshot = c.path
			h := newHarness(t, &cfg)
			logs := h.logs.FilterMessage("Initial snapshot not loaded; starting cold.")
			require.Equal(t, 1, logs.Len())
			assert.Equal(t, int64(1), h.counter("processor_scale_initial_snapshot_errors", attribute.String("status", c.status)))
			assert.Equal(t, int64(1), starts(h, sourceCold))
			assert.Empty(t, h.consume(makeTraces(w.batch(50)...)), "cold: training")
		})
	}
}

// drop: false (annotate-only): every span passes; each scored one says whether it was judged
// anomalous, and its score; the counters still say what was judged anomalous.
func TestAnnotateOnlyPassesEverySpanMarked(t *testing.T) {
	cfg := smallConfig()
	cfg.Drop = false
	h := newHarness(t, cfg)
	w := newWorkload(5)
	for range 30 {
		h.consume(makeTraces(w.batch(100)...))
	}
	in := append(w.batch(50), spanSpec{service: "checkout", op: normalKeys[1].op, start: w.next, dur: 10 * time.Second})
	out := h.consume(makeTraces(in...))
	require.Len(t, out, len(in), "annotate-only: nothing removed")
	anomalous := 0
	for _, s := range out {
		v, ok := s.Attributes().Get(AttrAnomalous)
		require.True(t, ok, "every scored span is marked")
		_, scored := s.Attributes().Get(AttrAnomalyScore)
		assert.True(t, scored)
		if v.Bool() {
			anomalous++
		}
	}
	for _, s := range out {
		if s.EndTimestamp().AsTime().Sub(s.StartTimestamp().AsTime()) >= 10*time.Second {
			v, _ := s.Attributes().Get(AttrAnomalous)
			assert.True(t, v.Bool(), "the slow span is judged anomalous")
		}
	}
	assert.LessOrEqual(t, anomalous, 5)
	assert.Equal(t, int64(0), h.counter("processor_scale_spans_dropped"))
	assert.Positive(t, h.counter("processor_scale_spans_kept"))
}

func TestPeriodicSnapshots(t *testing.T) {
	cfg := smallConfig()
	cfg.SnapshotPath = filepath.Join(t.TempDir(), "model.snapshot")
	cfg.SnapshotInterval = 20 * time.Millisecond
	h := newHarness(t, cfg)
	h.consume(makeTraces(newWorkload(9).batch(10)...))
	deadline := time.Now().Add(10 * time.Second)
	for h.counter("processor_scale_snapshots") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	assert.GreaterOrEqual(t, h.counter("processor_scale_snapshots"), int64(2))
	_, err := os.Stat(cfg.SnapshotPath)
	require.NoError(t, err)
}

func TestSnapshotErrorsAreCounted(t *testing.T) {
	cfg := smallConfig()
	dir := t.TempDir()
	cfg.SnapshotPath = filepath.Join(dir, "model.snapshot")
	cfg.SnapshotInterval = 0
	h := newHarness(t, cfg)
	// Make the directory unwritable by replacing it with a file.
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.WriteFile(dir, nil, 0o600))
	err := h.proc.Shutdown(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "final snapshot")
	assert.Equal(t, int64(1), h.counter("processor_scale_snapshot_errors"))
}

func TestConcurrentBatches(t *testing.T) {
	cfg := smallConfig()
	cfg.Rules = []map[string]any{decisionRule()}
	h := newHarness(t, cfg)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newWorkload(uint64(100 + g))
			for range 50 {
				_ = h.proc.ConsumeTraces(context.Background(), makeTraces(w.batch(50)...))
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(4*50*50), h.counter("processor_scale_spans_scored"))
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	h := newHarness(t, smallConfig())
	w := newWorkload(11)
	td := makeTraces(w.batch(512)...)
	run := h.procState()
	p := h.sp
	b := new(batch)
	b.reset(512)
	p.fill(td, b, run.keys)
	require.NoError(t, p.resolveMisses(b, run))
	allocs := testing.AllocsPerRun(100, func() {
		b.reset(512)
		p.fill(td, b, run.keys)
		if _, err := run.eng.process(uint64(t0.UnixNano()), b); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs, "key lookup and the engine call allocate nothing once warm")
}
