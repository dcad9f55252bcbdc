// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processorhelper"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/zap"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

// The contract with the daemon (and any trace UI), the names written into the spans, is in
// contract_gen.go, generated from scale-core (scale_core::contract).

const (
	// errorLogInterval is the least time between two logs of engine errors.
	errorLogInterval = 10 * time.Second
	// overflowCacheMax bounds the key-cache entries for names that map to the overflow or the
	// invalid key (the other entries are bounded by keys.max_keys).
	overflowCacheMax = 4096
	// serviceNameKey is the resource attribute naming the service.
	serviceNameKey = "service.name"
)

// option is a test seam (unexported).
type option func(*scaleProcessor)

// withEngineFactory replaces libscale (tests: fakes that fail).
func withEngineFactory(f engineFactory) option {
	return func(p *scaleProcessor) { p.factory, p.fakeEngine = f, true }
}

// withClock replaces the clock that drives the rules' sliding windows.
func withClock(now func() time.Time) option { return func(p *scaleProcessor) { p.now = now } }

// running is the state between Start and Shutdown; replaced as a whole if the engine is
// re-created after it was poisoned.
type running struct {
	eng   engine
	rules []string // rule names by index
	keys  *keyCache
}

// keyCache maps (service, operation) to the engine's key id, so that the hot path needs no
// per-span engine call for names: a map of operations per service, so that a span costs one look-up by
// its name, the resource's service having been looked up once. Bounded: at most keys.max_keys
// real ids plus overflowCacheMax overflow/invalid entries. Once it holds keys.max_keys real ids,
// the engine's key table is full and every name it does not hold is the overflow key, so no
// call is needed. Names are copied in, so the cache never holds on to a request's memory.
type keyCache struct {
	mu       sync.RWMutex
	services map[string]map[string]uint32
	known    int // entries with a real id
	overflow int // entries with keyOverflow or keyInvalid
	maxKeys  int
}

func newKeyCache(maxKeys int) *keyCache {
	return &keyCache{services: map[string]map[string]uint32{}, maxKeys: maxKeys}
}

// put caches id for (service, operation) within the bounds; the caller holds mu for writing.
func (k *keyCache) put(service, operation string, id uint32) {
	switch {
	case id != keyOverflow && id != keyInvalid:
		k.known++
	case k.overflow < overflowCacheMax:
		k.overflow++
	default:
		return
	}
	ops := k.services[service]
	if ops == nil {
		ops = map[string]uint32{}
		k.services[strings.Clone(service)] = ops
	}
	ops[strings.Clone(operation)] = id
}

type scaleProcessor struct {
	cfg     *Config
	logger  *zap.Logger
	tb      *metadata.TelemetryBuilder
	factory engineFactory
	// fakeEngine is set by withEngineFactory (then a build without cgo can run the processor).
	fakeEngine bool
	now        func() time.Time
	logEvery   time.Duration

	spec    engineSpec
	running atomic.Pointer[running]
	batches sync.Pool

	// lifecycle serialises Start, Shutdown and engine re-creation.
	lifecycle sync.Mutex
	stopped   bool
	stopSnap  chan struct{}
	snapDone  chan struct{}

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error

	// next receives the evidence reports (the pipeline's next consumer); serviceName and
	// instanceID name this collector on them.
	next        consumer.Traces
	serviceName string
	instanceID  string
	stopReport  chan struct{}
	reportDone  chan struct{}

	lastErrLog       atomic.Int64 // unix ns of the last engine-error log
	lastReportErrLog atomic.Int64 // unix ns of the last report-error log
	suppressed       atomic.Int64 // engine errors not logged since then
	lastRecreate     atomic.Int64 // unix ns of the last re-creation attempt
	skipOpts         [len(skipReasons)]metric.AddOption
	actionOpts       [3]metric.AddOption
	statusOptsMu     sync.Mutex
	statusOptsMap    map[string]metric.AddOption
}

func newScaleProcessor(set processor.Settings, cfg *Config, opts ...option) (*scaleProcessor, error) {
	p := &scaleProcessor{
		cfg:           cfg,
		logger:        set.Logger,
		factory:       nativeFactory,
		now:           time.Now,
		logEvery:      errorLogInterval,
		statusOptsMap: map[string]metric.AddOption{},
	}
	for _, o := range opts {
		o(p)
	}
	if !cgoEnabled && !p.fakeEngine {
		// Fail clearly at creation: "the scale processor requires CGO_ENABLED=1".
		return nil, errNoCgo
	}
	tb, err := metadata.NewTelemetryBuilder(set.TelemetrySettings)
	if err != nil {
		return nil, err
	}
	p.tb = tb
	p.serviceName, p.instanceID = set.BuildInfo.Command, ""
	if v, ok := set.TelemetrySettings.Resource.Attributes().Get(ResourceCollector); ok {
		p.instanceID = v.AsString()
	}
	if p.serviceName == "" {
		p.serviceName = "otelcol"
	}
	if p.instanceID == "" {
		p.instanceID = newInstanceID()
	}
	p.batches.New = func() any { return new(batch) }
	for i, r := range skipReasons {
		p.skipOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", r)))
	}
	for i := range p.actionOpts {
		p.actionOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("action", actionName(uint8(i)))))
	}
	return p, nil
}

// start creates the engine (failing hard on a bad configuration), restores the snapshot if
// there is one, and starts the periodic snapshots.
func (p *scaleProcessor) start(_ context.Context, _ component.Host) error {
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	if p.stopped || p.running.Load() != nil {
		return errors.New("scale processor: Start called twice or after Shutdown")
	}
	spec, err := p.cfg.engineSpec()
	if err != nil {
		return err
	}
	p.spec = spec
	run, err := p.newRunning()
	if err != nil {
		return err
	}
	p.running.Store(run)
	if p.cfg.SnapshotPath != "" && p.cfg.SnapshotInterval > 0 {
		p.stopSnap, p.snapDone = make(chan struct{}), make(chan struct{})
		go tickLoop(p.cfg.SnapshotInterval, p.stopSnap, p.snapDone, func() { _ = p.writeSnapshot(context.Background()) })
	}
	if p.cfg.ReportInterval > 0 && len(run.rules) > 0 {
		p.stopReport, p.reportDone = make(chan struct{}), make(chan struct{})
		go tickLoop(p.cfg.ReportInterval, p.stopReport, p.reportDone, func() { _ = p.sendReports(context.Background()) })
	}
	return nil
}

// Where a started engine's state came from (processor_scale_engine_starts' `source`).
const (
	sourceSnapshot        = "snapshot"
	sourceInitialSnapshot = "initial_snapshot"
	sourceCold            = "cold"
)

// newRunning creates an engine: from the snapshot at snapshot_path if it is there and usable,
// else from initial_snapshot if it is given and usable, else fresh (cold). Neither snapshot can
// stop the start: a bad one is logged (and an initial one counted) and the next source tried.
func (p *scaleProcessor) newRunning() (*running, error) {
	eng, err := p.factory.create(p.spec)
	if err != nil {
		return nil, fmt.Errorf("scale processor: %w", err)
	}
	source := sourceCold
	if path := p.cfg.SnapshotPath; path != "" {
		if _, statErr := os.Stat(path); statErr == nil {
			restored, err := p.factory.restore(p.spec, path)
			if err != nil {
				p.logger.Warn("Snapshot not restored; starting with a fresh model.", zap.String("snapshot_path", path), zap.Error(err))
			} else {
				eng.Close()
				eng = restored
				source = sourceSnapshot
				p.logger.Info("Restored the model from its snapshot.", zap.String("snapshot_path", path))
			}
		} else if dir := filepath.Dir(path); dir != "" {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				eng.Close()
				return nil, fmt.Errorf("scale processor: snapshot_path: %w", err)
			}
		}
	}
	if path := p.cfg.InitialSnapshot; path != "" && source == sourceCold {
		restored, err := p.factory.restore(p.spec, path)
		if err != nil {
			p.tb.ProcessorScaleInitialSnapshotErrors.Add(context.Background(), 1, p.statusOpt(statusName(err)))
			p.logger.Warn("Initial snapshot not loaded; starting cold.", zap.String("initial_snapshot", path), zap.Error(err))
		} else {
			eng.Close()
			eng = restored
			source = sourceInitialSnapshot
			p.logger.Info("Started warm from the initial snapshot.", zap.String("initial_snapshot", path))
		}
	}
	p.tb.ProcessorScaleEngineStarts.Add(context.Background(), 1, metric.WithAttributeSet(attribute.NewSet(attribute.String("source", source))))
	rules, err := eng.ruleNames()
	if err != nil {
		eng.Close()
		return nil, fmt.Errorf("scale processor: %w", err)
	}
	return &running{eng: eng, rules: rules, keys: newKeyCache(p.cfg.Keys.MaxKeys)}, nil
}

// tickLoop calls f every `every` until stop is closed, then closes done (the periodic
// snapshots and the rules' evidence reports).
func tickLoop(every time.Duration, stop <-chan struct{}, done chan<- struct{}, f func()) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f()
		}
	}
}

func (p *scaleProcessor) writeSnapshot(ctx context.Context) error {
	run := p.running.Load()
	if run == nil || p.cfg.SnapshotPath == "" {
		return nil
	}
	if err := run.eng.snapshotToFile(p.cfg.SnapshotPath); err != nil {
		p.tb.ProcessorScaleSnapshotErrors.Add(ctx, 1)
		p.logger.Warn("Snapshot not written.", zap.String("snapshot_path", p.cfg.SnapshotPath), zap.Error(err))
		return err
	}
	p.tb.ProcessorScaleSnapshots.Add(ctx, 1)
	return nil
}

// shutdown stops the snapshots, writes a last snapshot and frees the engine. Idempotent, safe
// without start; returns early (leaving the work to finish in the background) if ctx ends.
func (p *scaleProcessor) shutdown(ctx context.Context) error {
	p.shutdownOnce.Do(func() {
		p.shutdownDone = make(chan struct{})
		go func() {
			defer close(p.shutdownDone)
			p.shutdownErr = p.stopAndSave()
		}()
	})
	select {
	case <-p.shutdownDone:
		return p.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *scaleProcessor) stopAndSave() error {
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	p.stopped = true
	if p.stopReport != nil {
		close(p.stopReport)
		<-p.reportDone
	}
	if p.stopSnap != nil {
		close(p.stopSnap)
		<-p.snapDone
	}
	var err error
	if run := p.running.Load(); run != nil {
		if p.cfg.SnapshotPath != "" {
			if serr := p.writeSnapshot(context.Background()); serr != nil {
				err = fmt.Errorf("scale processor: final snapshot: %w", serr)
			}
		}
		run.eng.Close()
	}
	p.tb.Shutdown()
	return err
}

// processTraces is the hot path: the whole batch is scored as one engine batch (in short cgo
// calls, see nativeEngine.process), then spans not kept are removed and the kept ones
// annotated. Fails open: an engine error forwards the batch as is.
func (p *scaleProcessor) processTraces(ctx context.Context, td ptrace.Traces) (ptrace.Traces, error) {
	run := p.running.Load()
	n := td.SpanCount()
	if run == nil || n == 0 {
		return td, nil
	}
	began := time.Now()
	b := p.batches.Get().(*batch)
	defer p.batches.Put(b)
	b.reset(n)
	p.fill(td, b, run.keys)
	if len(b.misses) > 0 {
		if err := p.resolveMisses(b, run); err != nil {
			p.failOpen(ctx, run, err, n)
			return td, nil
		}
	}
	lost, err := run.eng.process(uint64(p.now().UnixNano()), b)
	if err != nil {
		p.failOpen(ctx, run, err, n)
		return td, nil
	}
	c := p.apply(td, b, run.rules)
	p.record(ctx, &c, b, lost, began)
	if td.SpanCount() == 0 {
		return td, processorhelper.ErrSkipProcessingData
	}
	return td, nil
}

// fill copies the spans' keys, timings and ids into b's flat arrays, in iteration order.
func (p *scaleProcessor) fill(td ptrace.Traces, b *batch, keys *keyCache) {
	i := 0
	keys.mu.RLock()
	full := keys.known >= keys.maxKeys
	rss := td.ResourceSpans()
	for r := 0; r < rss.Len(); r++ {
		rs := rss.At(r)
		service := serviceName(rs.Resource())
		ops := keys.services[service] // nil (every look-up misses) for a service not cached yet
		overflows := full && utf8.ValidString(service)
		sss := rs.ScopeSpans()
		for s := 0; s < sss.Len(); s++ {
			spans := sss.At(s).Spans()
			for k := 0; k < spans.Len(); k++ {
				span := spans.At(k)
				op := span.Name()
				if id, ok := ops[op]; ok {
					b.keyIDs[i] = id
				} else if overflows && utf8.ValidString(op) {
					b.keyIDs[i] = keyOverflow
				} else {
					b.misses = append(b.misses, keyMiss{index: i, service: service, operation: op})
				}
				b.startNs[i] = uint64(span.StartTimestamp())
				b.endNs[i] = uint64(span.EndTimestamp())
				tid, sid := span.TraceID(), span.SpanID()
				copy(b.traceIDs[16*i:16*i+16], tid[:])
				copy(b.spanIDs[8*i:8*i+8], sid[:])
				i++
			}
		}
	}
	keys.mu.RUnlock()
}

func serviceName(res pcommon.Resource) string {
	v, ok := res.Attributes().Get(serviceNameKey)
	if !ok {
		return ""
	}
	if v.Type() == pcommon.ValueTypeStr {
		return v.Str()
	}
	return v.AsString()
}

// resolveMisses interns the keys the cache did not hold (one call per new key, not per span)
// and caches them within the cache's bounds.
func (p *scaleProcessor) resolveMisses(b *batch, run *running) error {
	keys := run.keys
	keys.mu.Lock()
	defer keys.mu.Unlock()
	for _, m := range b.misses {
		if id, ok := keys.services[m.service][m.operation]; ok {
			b.keyIDs[m.index] = id
			continue
		}
		var id uint32
		switch {
		case !utf8.ValidString(m.service) || !utf8.ValidString(m.operation):
			id = keyInvalid
		case keys.known >= keys.maxKeys:
			id = keyOverflow
		default:
			var err error
			id, err = run.eng.intern(m.service, m.operation)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Code != StatusInvalidUtf8 {
					return err
				}
				id = keyInvalid
			}
		}
		b.keyIDs[m.index] = id
		keys.put(m.service, m.operation, id)
	}
	return nil
}

// counts are one batch's outcomes, recorded once per batch.
type counts struct {
	scored, kept, dropped int64
	skipped               [len(skipReasons)]int64
	decisions             [3]int64
}

// apply removes the spans not kept and annotates the others (with `drop: false` it removes none
// and annotates every scored span). Spans the engine could not judge
// (skipped) are forwarded unscored; a span that completed a rule's window is kept even if it is
// not anomalous, so that its scale.decision event reaches the daemon.
func (p *scaleProcessor) apply(td ptrace.Traces, b *batch, rules []string) counts {
	var c counts
	decs := b.decisions
	if len(decs) > 1 {
		slices.SortStableFunc(decs, func(x, y decision) int { return int(x.spanIndex) - int(y.spanIndex) })
	}
	i, dj := 0, 0
	annotate := !p.cfg.Drop
	td.ResourceSpans().RemoveIf(func(rs ptrace.ResourceSpans) bool {
		rs.ScopeSpans().RemoveIf(func(ss ptrace.ScopeSpans) bool {
			ss.Spans().RemoveIf(func(span ptrace.Span) bool {
				idx := i
				i++
				decided := false
				for dj < len(decs) && int(decs[dj].spanIndex) <= idx {
					if int(decs[dj].spanIndex) == idx {
						addDecisionEvent(span, &decs[dj], rules)
						if a := decs[dj].action; int(a) < len(c.decisions) {
							c.decisions[a]++
						}
						decided = true
					}
					dj++
				}
				if r := b.skip[idx]; r != 0 {
					if int(r) < len(c.skipped) {
						c.skipped[r]++
					}
					return false
				}
				c.scored++
				anomalous := b.keep[idx] != 0 || decided
				if anomalous || annotate {
					if s := b.scores[idx]; !math.IsNaN(s) {
						span.Attributes().PutDouble(AttrAnomalyScore, s)
					}
				}
				if annotate {
					span.Attributes().PutBool(AttrAnomalous, anomalous)
				}
				if anomalous {
					c.kept++
					return false
				}
				if annotate {
					return false // judged normal, forwarded: scored − kept
				}
				c.dropped++
				return true
			})
			return ss.Spans().Len() == 0
		})
		return rs.ScopeSpans().Len() == 0
	})
	return c
}

func addDecisionEvent(span ptrace.Span, d *decision, rules []string) {
	ev := span.Events().AppendEmpty()
	ev.SetName(EventDecision)
	ev.SetTimestamp(pcommon.Timestamp(d.timeNs))
	a := ev.Attributes()
	a.EnsureCapacity(9)
	name := ""
	if int(d.ruleIndex) < len(rules) {
		name = rules[d.ruleIndex]
	}
	a.PutStr(AttrRule, name)
	a.PutStr(AttrAction, actionName(d.action))
	a.PutInt(AttrCount, int64(d.count))
	a.PutDouble(AttrWindowMs, d.windowMs)
	if !math.IsNaN(d.thresholdMs) {
		a.PutDouble(AttrThresholdMs, d.thresholdMs)
	}
	a.PutDouble(AttrObservedMs, d.observedMs)
	if !math.IsNaN(d.score) {
		a.PutDouble(AttrScore, d.score)
	}
	if !math.IsNaN(d.loadRatio) {
		a.PutDouble(AttrLoadRatio, d.loadRatio)
	}
	a.PutInt(AttrConflated, int64(d.conflated))
}

// record emits one batch's telemetry (never per span).
func (p *scaleProcessor) record(ctx context.Context, c *counts, b *batch, lost int, began time.Time) {
	tb := p.tb
	if c.scored > 0 {
		tb.ProcessorScaleSpansScored.Add(ctx, c.scored)
	}
	if c.kept > 0 {
		tb.ProcessorScaleSpansKept.Add(ctx, c.kept)
	}
	if c.dropped > 0 {
		tb.ProcessorScaleSpansDropped.Add(ctx, c.dropped)
	}
	for r, v := range c.skipped {
		if v > 0 {
			tb.ProcessorScaleSpansSkipped.Add(ctx, v, p.skipOpts[r])
		}
	}
	for a, v := range c.decisions {
		if v > 0 {
			tb.ProcessorScaleDecisions.Add(ctx, v, p.actionOpts[a])
		}
	}
	if lost > 0 {
		tb.ProcessorScaleDecisionsLost.Add(ctx, int64(lost))
		p.logger.Warn("Decisions did not fit the batch's buffer and were lost.", zap.Int("lost", lost), zap.Int("kept", len(b.decisions)))
	}
	tb.ProcessorScaleBatchDuration.Record(ctx, time.Since(began).Seconds())
}

func (p *scaleProcessor) statusOpt(name string) metric.AddOption {
	p.statusOptsMu.Lock()
	defer p.statusOptsMu.Unlock()
	o, ok := p.statusOptsMap[name]
	if !ok {
		o = metric.WithAttributeSet(attribute.NewSet(attribute.String("status", name)))
		p.statusOptsMap[name] = o
	}
	return o
}

// failOpen counts an engine error, logs it at most once per logEvery, and, if the handle is
// poisoned, re-creates the engine (at most once per logEvery).
func (p *scaleProcessor) failOpen(ctx context.Context, run *running, err error, n int) {
	name := statusName(err)
	p.tb.ProcessorScaleEngineErrors.Add(ctx, 1, p.statusOpt(name))
	p.tb.ProcessorScaleSpansUnscored.Add(ctx, int64(n))
	now := time.Now().UnixNano()
	last := p.lastErrLog.Load()
	if now-last >= int64(p.logEvery) && p.lastErrLog.CompareAndSwap(last, now) {
		p.logger.Warn("Engine call failed; the batch passes through unscored.",
			zap.Error(err), zap.Int("spans", n), zap.Int64("errors_not_logged", p.suppressed.Swap(0)))
	} else {
		p.suppressed.Add(1)
	}
	var e *Error
	if errors.As(err, &e) && (e.Code == StatusPoisoned || e.Code == StatusPanic) {
		p.recreate(run, now)
	}
}

// recreate replaces a poisoned engine: from the last snapshot if there is one, else fresh.
func (p *scaleProcessor) recreate(old *running, now int64) {
	last := p.lastRecreate.Load()
	if now-last < int64(p.logEvery) || !p.lastRecreate.CompareAndSwap(last, now) {
		return
	}
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	if p.stopped || p.running.Load() != old {
		return
	}
	run, err := p.newRunning()
	if err != nil {
		p.logger.Error("Engine is poisoned and could not be re-created; spans pass through unscored.", zap.Error(err))
		return
	}
	p.running.Store(run)
	old.eng.Close()
	p.logger.Error("Engine was poisoned (a bug in libscale); re-created it.", zap.String("snapshot_path", p.cfg.SnapshotPath))
}
