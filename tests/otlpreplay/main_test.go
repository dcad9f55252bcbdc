// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

func defaults() options {
	return options{endpoint: "127.0.0.1:4317", duration: time.Second, workers: 4, conns: 2, batch: 512,
		requests: 4, services: 2, childSpans: 20, timeout: time.Second}
}

func TestSyntheticHasTelemetrygenShape(t *testing.T) {
	o := defaults()
	td := synthetic(o, 1) // request 1: service bench-1, 2 ms spans
	if td.SpanCount() != o.batch || td.ResourceSpans().Len() != 1 {
		t.Fatalf("%d spans in %d resources, want %d in 1", td.SpanCount(), td.ResourceSpans().Len(), o.batch)
	}
	rs := td.ResourceSpans().At(0)
	if v, _ := rs.Resource().Attributes().Get("service.name"); v.Str() != "bench-1" {
		t.Fatalf("service.name %q", v.Str())
	}
	names := map[string]time.Duration{}
	spans := rs.ScopeSpans().At(0).Spans()
	for i := range spans.Len() {
		sp := spans.At(i)
		names[sp.Name()] = sp.EndTimestamp().AsTime().Sub(sp.StartTimestamp().AsTime())
	}
	if len(names) != o.childSpans+1 || names["lets-go"] != 40*time.Millisecond || names["okey-dokey-0"] != 2*time.Millisecond {
		t.Fatalf("span names and durations: %v", names)
	}
}

func TestEncodeFindsEveryTraceID(t *testing.T) {
	td := synthetic(defaults(), 0)
	req, err := encode(td)
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite every trace id as the workers do, then decode: each span must carry its
	// trace's new id, and spans of one trace the same one.
	for n, offs := range req.traces {
		for _, off := range offs {
			binary.BigEndian.PutUint64(req.data[off:], 0xfeed)
			binary.BigEndian.PutUint64(req.data[off+8:], uint64(n+1))
		}
	}
	var u ptrace.ProtoUnmarshaler
	got, err := u.UnmarshalTraces(req.data)
	if err != nil {
		t.Fatal(err)
	}
	if got.SpanCount() != req.spans {
		t.Fatalf("%d spans, want %d", got.SpanCount(), req.spans)
	}
	old := td.ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	spans := got.ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	byOld := map[pcommon.TraceID]pcommon.TraceID{}
	for i := range spans.Len() {
		tid := spans.At(i).TraceID()
		if binary.BigEndian.Uint64(tid[:8]) != 0xfeed {
			t.Fatalf("span %d kept its trace id %x", i, tid)
		}
		o := old.At(i).TraceID()
		if prev, ok := byOld[o]; ok && prev != tid {
			t.Fatalf("span %d: trace split into %x and %x", i, prev, tid)
		}
		byOld[o] = tid
	}
	if len(byOld) != len(req.traces) {
		t.Fatalf("%d traces decoded, %d rewritten", len(byOld), len(req.traces))
	}
}

func TestReadBatchesOfDemoTraces(t *testing.T) {
	batches, err := readBatches(filepath.Join("..", "..", "data", "otel-demo", "traces.jsonl.gz"), 512)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, b := range batches[:len(batches)-1] {
		if b.SpanCount() < 512 {
			t.Fatalf("a batch of %d spans before the last", b.SpanCount())
		}
		total += b.SpanCount()
	}
	if len(batches) < 10 || total == 0 {
		t.Fatalf("%d batches", len(batches))
	}
}

func TestOnlyLoopbackAndBoundedOptions(t *testing.T) {
	for _, ep := range []string{"127.0.0.1:4317", "[::1]:4317", "localhost:4317", "127.0.0.2:1"} {
		o := defaults()
		o.endpoint = ep
		if err := o.validate(); err != nil {
			t.Errorf("%s: %v", ep, err)
		}
	}
	for _, ep := range []string{"10.0.0.1:4317", "example.com:4317", "0.0.0.0:4317", "4317"} {
		o := defaults()
		o.endpoint = ep
		if o.validate() == nil {
			t.Errorf("%s accepted", ep)
		}
	}
	o := defaults()
	o.duration = 2 * time.Hour
	if o.validate() == nil {
		t.Error("a 2 h run accepted")
	}
	o = defaults()
	o.duration = 0
	if o.validate() == nil {
		t.Error("an unbounded run accepted")
	}
}

// The sink answers gzip-compressed Export calls as an OTLP receiver would, counting the
// decompressed bytes, and refuses other methods.
func TestSinkReceivesGzipExports(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type result struct{ reqs, n int64 }
	done := make(chan result, 1)
	sinkCtx, stopSink := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopSink()
	go func() {
		r, n, _ := serveSink(sinkCtx, lis)
		done <- result{r, n}
	}()
	req, err := encode(synthetic(defaults(), 0))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}), grpc.UseCompressor(gzip.Name)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for range 3 {
		var reply []byte
		if err := cc.Invoke(ctx, exportMethod, &req.data, &reply); err != nil {
			t.Fatalf("Export: %v", err)
		}
	}
	var reply []byte
	if err := cc.Invoke(ctx, "/opentelemetry.proto.collector.logs.v1.LogsService/Export", &req.data, &reply); err == nil {
		t.Fatal("a logs export was accepted")
	}
	stopSink()
	r := <-done
	if r.reqs != 3 || r.n != 3*int64(len(req.data)) {
		t.Fatalf("sink counted %d requests, %d bytes; want 3, %d", r.reqs, r.n, 3*len(req.data))
	}
}

func TestSinkIsLoopbackOnly(t *testing.T) {
	o := defaults()
	o.sink = "0.0.0.0:4319"
	if err := o.validate(); err == nil {
		t.Fatal("a non-loopback sink address was accepted")
	}
}
