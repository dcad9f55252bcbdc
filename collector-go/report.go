// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"math"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.uber.org/zap"
)

// Evidence reports: every report_interval, what each rule's window saw since the last report,
// as one `scale.report` span per window, sent downstream like the pipeline's spans (to the
// daemon). Silence is not calm: the daemon scales down only on reports of healthy latency, and
// holds when none arrive. The names below are part of the contract with the daemon
// (rust/scaler/src/serve/intake.rs reads them): SpanReport, ScopeReport, ResourceCollector and the
// AttrReport* attributes, in contract_gen.go.

// sendReports drains the engine's rule reports and sends them to the next consumer as one
// batch of `scale.report` spans. Errors are counted and logged at most every logEvery; the
// next interval's report covers the time since the last one that was drained.
func (p *scaleProcessor) sendReports(ctx context.Context) error {
	run := p.running.Load()
	if run == nil || p.next == nil {
		return nil
	}
	reports, err := run.eng.ruleReports(uint64(p.now().UnixNano()))
	if err == nil && len(reports) == 0 {
		return nil
	}
	if err == nil {
		err = p.next.ConsumeTraces(ctx, p.reportTraces(reports, run.rules))
	}
	if err != nil {
		p.tb.ProcessorScaleReportErrors.Add(ctx, 1)
		now := time.Now().UnixNano()
		if last := p.lastReportErrLog.Load(); now-last >= int64(p.logEvery) && p.lastReportErrLog.CompareAndSwap(last, now) {
			p.logger.Warn("Rule evidence report not sent; the daemon holds its targets' scale until reports arrive.", zap.Error(err))
		}
		return err
	}
	p.tb.ProcessorScaleReports.Add(ctx, int64(len(reports)))
	return nil
}

// reportTraces builds one resource (this collector) with one `scale.report` span per report.
func (p *scaleProcessor) reportTraces(reports []ruleReport, rules []string) ptrace.Traces {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	res := rs.Resource().Attributes()
	res.PutStr(serviceNameKey, p.serviceName)
	res.PutStr(ResourceCollector, p.instanceID)
	ss := rs.ScopeSpans().AppendEmpty()
	ss.Scope().SetName(ScopeReport)
	spans := ss.Spans()
	spans.EnsureCapacity(len(reports))
	traceID := newTraceID()
	for i := range reports {
		r := &reports[i]
		sp := spans.AppendEmpty()
		sp.SetName(SpanReport)
		sp.SetKind(ptrace.SpanKindInternal)
		sp.SetTraceID(traceID)
		var sid [8]byte
		binary.BigEndian.PutUint64(sid[:], uint64(i)+1)
		sp.SetSpanID(pcommon.SpanID(sid))
		sp.SetStartTimestamp(pcommon.Timestamp(r.sinceNs))
		sp.SetEndTimestamp(pcommon.Timestamp(r.untilNs))
		a := sp.Attributes()
		name := ""
		if int(r.ruleIndex) < len(rules) {
			name = rules[r.ruleIndex]
		}
		a.PutStr(AttrRule, name)
		if r.service != "" {
			a.PutStr(AttrService, r.service)
		}
		a.PutInt(AttrCount, int64(r.count))
		a.PutDouble(AttrWindowMs, r.windowMs)
		putFinite(a, AttrThresholdMs, r.thresholdMs)
		a.PutInt(AttrReportMatched, clampInt64(r.matched))
		a.PutInt(AttrReportBreaches, clampInt64(r.breaches))
		a.PutInt(AttrReportInWindow, int64(r.inWindow))
		putFinite(a, AttrReportP50Ms, r.p50Ms)
		putFinite(a, AttrReportP90Ms, r.p90Ms)
		putFinite(a, AttrReportP99Ms, r.p99Ms)
		putFinite(a, AttrReportMaxMs, r.maxMs)
	}
	return td
}

func putFinite(a pcommon.Map, k string, v float64) {
	if !math.IsNaN(v) && !math.IsInf(v, 0) {
		a.PutDouble(k, v)
	}
}

func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// newTraceID is a random trace id for one batch of reports (a report is not part of any
// request's trace).
func newTraceID() pcommon.TraceID {
	var id [16]byte
	_, _ = rand.Read(id[:])
	return pcommon.TraceID(id)
}

// newInstanceID is a random id for a collector whose telemetry resource has no
// service.instance.id.
func newInstanceID() string {
	var id [16]byte
	_, _ = rand.Read(id[:])
	return hex.EncodeToString(id[:])
}
