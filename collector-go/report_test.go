// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build cgo

package scaleprocessor

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
)

// Every report interval, each rule's evidence (spans matched, breaches, latency) goes downstream
// as a scale.report span, whether or not the rule fired: silence is not calm for the daemon.
func TestRuleReportsCarryEachWindowsEvidence(t *testing.T) {
	cfg := smallConfig()
	cfg.Sampler.TrainSize = 1_000_000
	cfg.ReportInterval = 0 // driven by hand below
	perService := decisionRule()
	perService["name"] = "each-service"
	perService["match"] = map[string]any{"service": "*"}
	perService["action"] = map[string]any{"kind": "horizontal", "target": map[string]any{"kind": "Deployment", "namespace": "shop", "name": "${service}"}, "max": 5}
	cfg.Rules = []map[string]any{decisionRule(), perService}
	h := newHarness(t, cfg)
	begin := h.clock.Now()
	for i := range 10 {
		d := 20 * time.Millisecond
		if i == 9 {
			d = 400 * time.Millisecond // one breach
		}
		h.clock.Advance(100 * time.Millisecond)
		h.consume(makeTraces(
			spanSpec{service: "checkout", op: "PlaceOrder", start: h.clock.Now(), dur: d},
			spanSpec{service: "cart", op: "GetCart", start: h.clock.Now(), dur: 5 * time.Millisecond},
		))
	}
	h.clock.Advance(time.Second)
	before := len(h.sink.AllTraces())
	require.NoError(t, h.sp.sendReports(context.Background()))
	require.Len(t, h.sink.AllTraces(), before+1, "one batch of reports")
	td := h.sink.AllTraces()[before]
	res := td.ResourceSpans().At(0).Resource().Attributes().AsRaw()
	assert.NotEmpty(t, res[ResourceCollector], "names the collector")
	got := map[string]map[string]any{}
	for _, s := range allSpans(td) {
		require.Equal(t, SpanReport, s.Name())
		a := s.Attributes().AsRaw()
		key := a[AttrRule].(string)
		if svc, ok := a[AttrService]; ok {
			key += "/" + svc.(string)
		}
		got[key] = a
		assert.Equal(t, begin.Add(100*time.Millisecond).UnixNano(), int64(s.StartTimestamp()), key)
		assert.Equal(t, h.clock.Now().UnixNano(), int64(s.EndTimestamp()), key)
	}
	require.Len(t, got, 3, "the fixed rule, and one window per service for the other: %v", got)
	fixed := got["checkout-latency"]
	assert.Equal(t, int64(10), fixed[AttrReportMatched])
	assert.Equal(t, int64(1), fixed[AttrReportBreaches])
	assert.Equal(t, int64(1), fixed[AttrReportInWindow])
	assert.Equal(t, int64(3), fixed[AttrCount])
	assert.Equal(t, 60000.0, fixed[AttrWindowMs])
	assert.Equal(t, 100.0, fixed[AttrThresholdMs])
	assert.InDelta(t, 20.0, fixed[AttrReportP50Ms], 5.0)
	assert.InDelta(t, 400.0, fixed[AttrReportMaxMs], 1e-9)
	assert.Equal(t, int64(10), got["each-service/cart"][AttrReportMatched])
	assert.Equal(t, int64(0), got["each-service/cart"][AttrReportBreaches])
	assert.Equal(t, int64(3), h.counter("processor_scale_reports"))

	// The next interval starts where this one ended: nothing matched since.
	h.clock.Advance(time.Second)
	require.NoError(t, h.sp.sendReports(context.Background()))
	for _, s := range allSpans(h.sink.AllTraces()[before+1]) {
		assert.Equal(t, int64(0), s.Attributes().AsRaw()[AttrReportMatched])
		_, hasP50 := s.Attributes().Get(AttrReportP50Ms)
		assert.False(t, hasP50, "no latency without spans")
	}
}

// A report that cannot be sent is counted and logged (rate-limited); the collector goes on.
func TestRuleReportErrorsAreCounted(t *testing.T) {
	cfg := smallConfig()
	cfg.ReportInterval = 0
	cfg.Rules = []map[string]any{decisionRule()}
	h := newUnstarted(t, cfg)
	h.sp.next = consumertest.NewErr(errors.New("exporter queue full"))
	require.NoError(t, h.proc.Start(context.Background(), componenttest.NewNopHost()))
	require.Error(t, h.sp.sendReports(context.Background()))
	require.Error(t, h.sp.sendReports(context.Background()))
	assert.Equal(t, int64(2), h.counter("processor_scale_report_errors"))
	assert.Equal(t, 1, h.logs.FilterMessageSnippet("report not sent").Len(), "logged once per interval of logEvery")
}

// With report_interval set, reports flow on their own.
func TestRuleReportsFlowOnTheirInterval(t *testing.T) {
	cfg := smallConfig()
	cfg.ReportInterval = 20 * time.Millisecond
	cfg.Rules = []map[string]any{decisionRule()}
	h := newHarness(t, cfg)
	require.Eventually(t, func() bool { return h.counter("processor_scale_reports") >= 2 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, h.proc.Shutdown(context.Background()))
	n := len(h.sink.AllTraces())
	time.Sleep(60 * time.Millisecond)
	assert.Len(t, h.sink.AllTraces(), n, "none after shutdown")
}
