// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

// Command otlpreplay is a load generator for collector throughput benchmarks
// (scripts/bench-collector.sh): it sends pre-encoded OTLP/gRPC ExportTraceServiceRequests to a
// collector on the loopback interface as fast as the collector accepts them, from several
// concurrent workers, for a bounded time.
//
// telemetrygen builds every span with the OpenTelemetry SDK and encodes it, which costs far more
// CPU per span than the collector spends receiving it; on a small machine it saturates long
// before the collector does. otlpreplay encodes its requests once at start and then only
// rewrites their trace ids (a 16-byte copy per trace, so every request carries new traces and a
// trace-grouping processor such as tail_sampling sees fresh traces, as with a real client) and
// sends the bytes, so one core of load saturates several cores of collector.
//
//	otlpreplay -endpoint 127.0.0.1:4317 -duration 20s [-workers 4] [-conns 2] [-batch 512]
//	           [-services 2 -child-spans 20 | -input data/otel-demo/traces.jsonl.gz]
//
// Spans, by default, have telemetrygen's shape (`telemetrygen traces --child-spans N
// --span-duration D`): per service `bench-i` (D = i+1 ms), traces of one `lets-go` client span
// lasting N·D and N `okey-dokey-j` server spans lasting D each, with telemetrygen's attributes;
// each request holds one service's spans. With -input, the recorded OTLP/JSON traces (one
// TracesData per line, optionally gzipped) are cut into requests of about -batch spans.
//
// It prints one line at the end: requests and spans sent and accepted (no gRPC error), errors
// and the achieved rate. Only loopback endpoints are accepted.
//
// With -sink it is instead the other end of a collector's otlp_grpc exporter: a trace store
// that costs next to nothing, so that a benchmark can include the exporter's real work
// (marshalling, gzip, HTTP/2) without a store's own CPU use in the way.
//
//	otlpreplay -sink 127.0.0.1:4319 -duration 20s
//
// It serves TraceService/Export on the loopback address for -duration: each request is
// received and decompressed (gzip, as the exporter sends by default) but not decoded, and
// answered with an empty ExportTraceServiceResponse. At the end it prints the requests and
// bytes received.
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // the sink accepts gzip, the otlp_grpc exporter's default
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// exportMethod is the OTLP trace service's one RPC.
const exportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// maxDuration bounds -duration, so that a typo cannot start an endless load.
const maxDuration = time.Hour

type options struct {
	endpoint   string
	duration   time.Duration
	workers    int
	conns      int
	batch      int
	requests   int
	services   int
	childSpans int
	input      string
	timeout    time.Duration
	sink       string
}

func main() {
	var o options
	flag.StringVar(&o.endpoint, "endpoint", "127.0.0.1:4317", "the collector's OTLP/gRPC endpoint (host:port, loopback only)")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long to send (at most 1h)")
	flag.IntVar(&o.workers, "workers", 4, "concurrent Export calls in flight")
	flag.IntVar(&o.conns, "conns", 2, "gRPC connections the workers share (round robin)")
	flag.IntVar(&o.batch, "batch", 512, "spans per request")
	flag.IntVar(&o.requests, "requests", 16, "synthetic spans: distinct requests encoded per worker (sent in turn)")
	flag.IntVar(&o.services, "services", 2, "synthetic spans: services bench-0 .. bench-(n-1), span duration i+1 ms")
	flag.IntVar(&o.childSpans, "child-spans", 20, "synthetic spans: child spans per trace (telemetrygen --child-spans)")
	flag.StringVar(&o.input, "input", "", "replay these OTLP/JSON traces (.jsonl or .jsonl.gz, one TracesData per line) instead of synthetic spans")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "deadline of one Export call")
	flag.StringVar(&o.sink, "sink", "", "instead of sending, receive Export calls on this loopback address (host:port) for -duration, without decoding them")
	flag.Parse()
	var err error
	if o.sink != "" {
		err = runSink(o)
	} else {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "otlpreplay:", err)
		os.Exit(1)
	}
}

func (o options) validate() error {
	switch {
	case o.duration <= 0 || o.duration > maxDuration:
		return fmt.Errorf("-duration %v: must be in (0, %v]", o.duration, maxDuration)
	case o.workers < 1 || o.workers > 256:
		return fmt.Errorf("-workers %d: must be in [1, 256]", o.workers)
	case o.conns < 1 || o.conns > o.workers:
		return fmt.Errorf("-conns %d: must be in [1, workers]", o.conns)
	case o.batch < 1 || o.batch > 65536:
		return fmt.Errorf("-batch %d: must be in [1, 65536]", o.batch)
	case o.requests < 1 || o.requests > 1024:
		return fmt.Errorf("-requests %d: must be in [1, 1024]", o.requests)
	case o.services < 1 || o.services > 1000:
		return fmt.Errorf("-services %d: must be in [1, 1000]", o.services)
	case o.childSpans < 0 || o.childSpans > 1000:
		return fmt.Errorf("-child-spans %d: must be in [0, 1000]", o.childSpans)
	case o.timeout <= 0:
		return fmt.Errorf("-timeout %v: must be positive", o.timeout)
	}
	if o.sink != "" {
		return checkLoopback(o.sink)
	}
	return checkLoopback(o.endpoint)
}

// checkLoopback refuses endpoints that are not on this machine's loopback interface.
func checkLoopback(endpoint string) error {
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return fmt.Errorf("-endpoint %q: %w", endpoint, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-endpoint %q: only loopback addresses (127.0.0.0/8, ::1, localhost) are accepted", endpoint)
	}
	return nil
}

// request is one encoded ExportTraceServiceRequest and where its trace ids are.
type request struct {
	data  []byte
	spans int
	// traces[t] lists the byte offsets of trace t's 16-byte id (one per span of the trace).
	traces [][]int
}

// rawCodec sends and receives message bytes as they are: the requests are encoded already, and
// the responses are not needed (the collector's own metrics count what it accepted).
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

// Unmarshal discards the bytes; a sink's *int is told how many there were.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if n, ok := v.(*int); ok {
		*n = data.Len()
	}
	return nil
}

// Name is the content subtype the server sees (application/grpc+proto): the bytes are protobuf.
func (rawCodec) Name() string { return "proto" }

var _ encoding.CodecV2 = rawCodec{}

func run(o options) error {
	if err := o.validate(); err != nil {
		return err
	}
	var batches []ptrace.Traces
	if o.input != "" {
		var err error
		if batches, err = readBatches(o.input, o.batch); err != nil {
			return err
		}
		if len(batches) == 0 {
			return fmt.Errorf("-input %s: no spans", o.input)
		}
	}
	// Each worker owns its requests, since it rewrites their trace ids in place.
	// With -input, worker w sends batches w, w+workers, ... (together, the whole file).
	reqs := make([][]request, o.workers)
	for w := range reqs {
		n := o.requests
		if batches != nil {
			n = max(1, (len(batches)-w+o.workers-1)/o.workers)
		}
		for r := range n {
			var td ptrace.Traces
			if batches != nil {
				td = batches[(w+r*o.workers)%len(batches)]
			} else {
				td = synthetic(o, w*o.requests+r)
			}
			req, err := encode(td)
			if err != nil {
				return err
			}
			reqs[w] = append(reqs[w], req)
		}
	}

	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		cc, err := grpc.NewClient(o.endpoint,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			return err
		}
		defer cc.Close()
		conns[i] = cc
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()
	var sentReqs, sentSpans, okSpans, errs atomic.Int64
	var firstErr atomic.Value
	// Trace ids: 8 bytes of this run's start time and worker, 8 of a per-worker counter.
	runID := uint64(time.Now().UnixNano())
	began := time.Now()
	var wg sync.WaitGroup
	for w := range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := conns[w%len(conns)]
			var id [16]byte
			binary.BigEndian.PutUint64(id[:8], runID^uint64(w)<<56)
			var seq uint64
			for i := 0; ctx.Err() == nil; i++ {
				req := &reqs[w][i%len(reqs[w])]
				for _, offs := range req.traces {
					seq++
					binary.BigEndian.PutUint64(id[8:], seq)
					for _, off := range offs {
						copy(req.data[off:off+16], id[:])
					}
				}
				callCtx, callCancel := context.WithTimeout(ctx, o.timeout)
				var reply []byte
				err := cc.Invoke(callCtx, exportMethod, &req.data, &reply)
				callCancel()
				sentReqs.Add(1)
				sentSpans.Add(int64(req.spans))
				if err != nil {
					if ctx.Err() != nil {
						return // the run ended during the call
					}
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					// Back off a little so that a refusing collector is not spun against.
					select {
					case <-ctx.Done():
					case <-time.After(10 * time.Millisecond):
					}
					continue
				}
				okSpans.Add(int64(req.spans))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(began).Seconds()
	fmt.Printf("otlpreplay: %d requests, %d spans sent, %d accepted, %d errors in %.1f s (%.0f accepted spans/s; %d workers, %d connections, %d spans per request)\n",
		sentReqs.Load(), sentSpans.Load(), okSpans.Load(), errs.Load(), elapsed, float64(okSpans.Load())/elapsed, o.workers, o.conns, o.batch)
	if e := firstErr.Load(); e != nil {
		fmt.Printf("otlpreplay: first error: %s\n", e)
	}
	if okSpans.Load() == 0 {
		return errors.New("no request was accepted")
	}
	return nil
}

// encode marshals td as an ExportTraceServiceRequest (the same bytes as TracesData) and finds
// its trace ids.
func encode(td ptrace.Traces) (request, error) {
	var m ptrace.ProtoMarshaler
	data, err := m.MarshalTraces(td)
	if err != nil {
		return request{}, err
	}
	req := request{data: data, spans: td.SpanCount()}
	seen := map[pcommon.TraceID]bool{}
	rss := td.ResourceSpans()
	for i := range rss.Len() {
		sss := rss.At(i).ScopeSpans()
		for j := range sss.Len() {
			spans := sss.At(j).Spans()
			for k := range spans.Len() {
				tid := spans.At(k).TraceID()
				if seen[tid] || tid.IsEmpty() {
					continue
				}
				seen[tid] = true
				var offs []int
				for at := 0; ; {
					n := bytes.Index(data[at:], tid[:])
					if n < 0 {
						break
					}
					offs = append(offs, at+n)
					at += n + 16
				}
				req.traces = append(req.traces, offs)
			}
		}
	}
	return req, nil
}

// synthetic builds request n in telemetrygen's shape: one service's traces, batch spans.
func synthetic(o options, n int) ptrace.Traces {
	svc := n % o.services
	d := time.Duration(svc+1) * time.Millisecond
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	ra := rs.Resource().Attributes()
	ra.PutStr("service.name", "bench-"+strconv.Itoa(svc))
	ra.PutStr("telemetry.sdk.language", "go")
	ra.PutStr("telemetry.sdk.name", "opentelemetry")
	ra.PutStr("telemetry.sdk.version", "1.38.0")
	ss := rs.ScopeSpans().AppendEmpty()
	ss.Scope().SetName("telemetrygen")
	spans := ss.Spans()
	spans.EnsureCapacity(o.batch)
	start := time.Now().Add(-time.Minute)
	var tid pcommon.TraceID
	var parent pcommon.SpanID
	seq := uint64(n) << 32
	newID := func() []byte {
		seq++
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], seq|1<<63)
		return b[:]
	}
	for i := 0; spans.Len() < o.batch; i = (i + 1) % (o.childSpans + 1) {
		sp := spans.AppendEmpty()
		var sid pcommon.SpanID
		copy(sid[:], newID())
		sp.SetSpanID(sid)
		sa := sp.Attributes()
		sa.PutStr("network.peer.address", "1.2.3.4")
		if i == 0 {
			// A new trace: its client span covers its children, one after the other.
			copy(tid[:8], newID())
			copy(tid[8:], newID())
			parent = sid
			sp.SetName("lets-go")
			sp.SetKind(ptrace.SpanKindClient)
			sa.PutStr("peer.service", "telemetrygen-server")
			sp.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
			sp.SetEndTimestamp(pcommon.NewTimestampFromTime(start.Add(time.Duration(o.childSpans) * d)))
		} else {
			sp.SetParentSpanID(parent)
			sp.SetName("okey-dokey-" + strconv.Itoa(i-1))
			sp.SetKind(ptrace.SpanKindServer)
			sa.PutStr("peer.service", "telemetrygen-client")
			s := start.Add(time.Duration(i-1) * d)
			sp.SetStartTimestamp(pcommon.NewTimestampFromTime(s))
			sp.SetEndTimestamp(pcommon.NewTimestampFromTime(s.Add(d)))
		}
		sp.SetTraceID(tid)
	}
	return td
}

// readBatches reads OTLP/JSON traces (one TracesData per line, gzipped if the name ends in .gz)
// and cuts them into batches of about size spans (whole ResourceSpans).
func readBatches(path string, size int) ([]ptrace.Traces, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var u ptrace.JSONUnmarshaler
	var out []ptrace.Traces
	cur := ptrace.NewTraces()
	line := 0
	for sc.Scan() {
		line++
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		td, err := u.UnmarshalTraces(sc.Bytes())
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		td.ResourceSpans().MoveAndAppendTo(cur.ResourceSpans())
		if cur.SpanCount() >= size {
			out = append(out, cur)
			cur = ptrace.NewTraces()
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cur.SpanCount() > 0 {
		out = append(out, cur)
	}
	return out, nil
}

// runSink serves TraceService/Export on o.sink for o.duration (see the package comment).
func runSink(o options) error {
	if err := o.validate(); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.sink)
	if err != nil {
		return err
	}
	// SIGTERM or SIGINT (the benchmark stopping it) ends the run early, with its line printed.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	began := time.Now()
	reqs, n, err := serveSink(ctx, lis)
	if err != nil {
		return err
	}
	fmt.Printf("otlpreplay sink: %d requests, %d bytes (decompressed) received in %.1f s\n", reqs, n, time.Since(began).Seconds())
	return nil
}

// serveSink answers Export calls on lis until ctx ends, without decoding them; it returns the
// requests and (decompressed) bytes received.
func serveSink(ctx context.Context, lis net.Listener) (reqs, received int64, err error) {
	var nReqs, nBytes atomic.Int64
	handler := func(_ any, stream grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(stream)
		if method != exportMethod {
			return status.Errorf(codes.Unimplemented, "otlpreplay sink: unknown method %s", method)
		}
		var n int
		if err := stream.RecvMsg(&n); err != nil {
			return err
		}
		nReqs.Add(1)
		nBytes.Add(int64(n))
		empty := []byte{}
		return stream.SendMsg(&empty)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.UnknownServiceHandler(handler),
		grpc.MaxRecvMsgSize(64<<20))
	stopped := context.AfterFunc(ctx, srv.Stop)
	defer stopped()
	err = srv.Serve(lis)
	return nReqs.Load(), nBytes.Load(), err
}
