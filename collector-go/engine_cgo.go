// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build cgo

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

// libscale is linked statically: build it first with `cargo build --workspace --release` (or
// `make libscale`) at the repository root. The libraries after libscale.a are the native
// libraries rustc reports for the staticlib (rust/ffi/README.md, "Static linking").

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#cgo LDFLAGS: ${SRCDIR}/../target/release/libscale.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
#include <stdlib.h>
#include "scale.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// cgoEnabled reports whether this build can reach libscale.
const cgoEnabled = true

// Compile-time checks that the Go status constants equal the header's (an index out of range
// of a one-element array does not compile).
var (
	_ = [1]struct{}{}[C.SCALE_STATUS_OK-StatusOk]
	_ = [1]struct{}{}[C.SCALE_STATUS_DECISIONS_TRUNCATED-StatusDecisionsTruncated]
	_ = [1]struct{}{}[C.SCALE_STATUS_INVALID_UTF8-StatusInvalidUtf8]
	_ = [1]struct{}{}[C.SCALE_STATUS_BUFFER_TOO_SMALL-StatusBufferTooSmall]
	_ = [1]struct{}{}[C.SCALE_STATUS_INVALID_CONFIG-StatusInvalidConfig]
	_ = [1]struct{}{}[C.SCALE_STATUS_INVALID_SNAPSHOT-StatusInvalidSnapshot]
	_ = [1]struct{}{}[C.SCALE_STATUS_SNAPSHOT_MISMATCH-StatusSnapshotMismatch]
	_ = [1]struct{}{}[C.SCALE_STATUS_IO-StatusIo]
	_ = [1]struct{}{}[C.SCALE_STATUS_POISONED-StatusPoisoned]
	_ = [1]struct{}{}[C.SCALE_STATUS_CHUNK_OUT_OF_SEQUENCE-StatusChunkOutOfSequence]
	_ = [1]struct{}{}[C.SCALE_KEY_OVERFLOW-keyOverflow]
	_ = [1]struct{}{}[C.SCALE_SKIP_INVALID_KEY-6]
	_ = [1]struct{}{}[C.SCALE_ACTION_HORIZONTAL-actionHorizontal]
	_ = [1]struct{}{}[C.SCALE_ACTION_VERTICAL-actionVertical]
)

// headerVersion is the version of include/scale.h this package was compiled against.
var headerVersion = fmt.Sprintf("%d.%d.%d", C.SCALE_VERSION_MAJOR, C.SCALE_VERSION_MINOR, C.SCALE_VERSION_PATCH)

// rawDecisions is the engine's decision output buffer (C structs, plain data).
type rawDecisions = []C.scale_decision_t

// cBatch holds a batch's engine-call arguments (filled by batch.args for each call) and the pins
// that let them point at the batch's Go arrays: cgo allows Go memory passed to C to hold Go
// pointers only if they are pinned.
type cBatch struct {
	// args is allocated once, apart from the batch: cgo checks the whole Go object a pointer
	// argument points into, and this one holds nothing but the (pinned) array pointers.
	args *cArgs
	// Two pinners, for the inputs and the outputs: a Pinner holds up to 5 pins without
	// allocating.
	pinIn, pinOut runtime.Pinner
}

// cArgs are the structs the hot calls take: the spans' input arrays and the output arrays.
type cArgs struct {
	in  C.scale_span_batch_t
	out C.scale_batch_out_t
}

// msgCap is the size of the message buffer of constructors and file functions.
const msgCap = 16 << 10

// defaultChunkSpans is how many spans one cgo call scores (scale_engine_process_chunk).
//
// A cgo call that lasts longer than sysmon's tick (20 µs at least) loses its P: sysmon hands it
// to another thread, and on return the goroutine waits to get a P back. With GOMAXPROCS=1 that
// turned every 512-span engine call (~180 µs) into context switches and extra threads, and
// stretched GC mark phases (docs/bench/collector.md). In the collector benchmark 16 to 128 spans
// per call all removed that (equal within noise); at ~0.3 µs per span, 32 spans keep a call near
// 10 µs, under the tick even when sysmon is awake, while the fixed cost of a call (~0.1 µs for
// cgo and the ABI's checks and lock) stays around 1 % of it.
const defaultChunkSpans = 32

// nativeEngine wraps one `scale_engine_t` handle.
//
// The C handle is safe for concurrent calls except scale_engine_free; mu enforces that: every
// call holds the read lock, Close takes the write lock. Only Close touches _ptr after creation.
// batchMu serialises chunked batches: a batch's chunks are one sequence on the handle, which
// another chunked batch must not interleave (its results would then differ from one call per
// batch). A batch of one call needs no more than the handle's own lock.
type nativeEngine struct {
	mu          sync.RWMutex
	batchMu     sync.Mutex
	_ptr        *C.scale_engine_t
	decisionCap int
	// chunkSpans is the most spans per engine call; 0 means the whole batch in one call
	// (scale_engine_process; tests compare the two).
	chunkSpans int
}

// ptr returns the handle; panics after Close (the wrapper's callers check closed first, so a
// panic here is a bug). Under the `debug` build tag it runs the GC first, to flush out missing
// runtime.KeepAlive calls.
func (e *nativeEngine) ptr() *C.scale_engine_t {
	p := e._ptr
	if p == nil {
		panic("scale: engine used after Close")
	}
	maybeGC()
	return p
}

// newError copies a failed call's status and message into a Go error.
func newError(st C.scale_status_t, msg []byte) *Error {
	return &Error{Code: int32(st), Status: C.GoString(C.scale_status_str(C.int32_t(st))), Msg: string(msg)}
}

func statusError(st C.scale_status_t) *Error {
	return newError(st, nil)
}

// bytesPtr is the C view of b's bytes; (NULL, 0) for an empty slice.
func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(b)))
}

func stringPtr(s string) *C.uint8_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(unsafe.StringData(s)))
}

func checkVersion() error {
	if v := C.GoString(C.scale_version()); v != headerVersion {
		return &Error{Code: statusVersionMismatch, Status: statusNameVersionMismatch,
			Msg: fmt.Sprintf("libscale is version %s but include/scale.h is %s: rebuild libscale (cargo build --workspace --release) and this package", v, headerVersion)}
	}
	return nil
}

// ctorArgs are a constructor's arguments: the settings text and, with a rules file
// (withRules), its text apart (for the *_with_rules constructors, which report its problems
// with the file's own lines); the output handle and the message buffer.
type ctorArgs struct {
	settings    *C.uint8_t
	settingsLen C.size_t
	withRules   bool
	rules       *C.uint8_t
	rulesLen    C.size_t
	out         **C.scale_engine_t
	msg         *C.char
	msgLen      *C.size_t
}

// construct runs one constructor with spec's texts and a message buffer, and wraps the handle.
func construct(spec engineSpec, call func(a *ctorArgs) C.scale_status_t) (*nativeEngine, error) {
	if err := checkVersion(); err != nil {
		return nil, err
	}
	msg := make([]byte, msgCap)
	var out *C.scale_engine_t
	var n C.size_t
	st := call(&ctorArgs{
		settings: bytesPtr(spec.settings), settingsLen: C.size_t(len(spec.settings)),
		withRules: spec.rules != nil, rules: bytesPtr(spec.rules), rulesLen: C.size_t(len(spec.rules)),
		out: &out, msg: (*C.char)(unsafe.Pointer(&msg[0])), msgLen: &n,
	})
	runtime.KeepAlive(spec.settings)
	runtime.KeepAlive(spec.rules)
	if st != C.SCALE_STATUS_OK {
		return nil, newError(st, []byte(spec.rulesFileMessage(string(msg[:n]))))
	}
	e := &nativeEngine{_ptr: out, chunkSpans: defaultChunkSpans}
	runtime.SetFinalizer(e, (*nativeEngine).Close) // backstop only: owners call Close
	var rules C.size_t
	e.mu.RLock()
	st = C.scale_engine_rule_count(e.ptr(), &rules)
	if st == C.SCALE_STATUS_OK && spec.budgetInTraces {
		st = C.scale_engine_count_budget_in_traces(e.ptr(), 1)
	}
	e.mu.RUnlock()
	runtime.KeepAlive(e)
	if st != C.SCALE_STATUS_OK {
		e.Close()
		return nil, statusError(st)
	}
	// Decisions of one batch naming the same target are conflated, so a batch has at most one
	// per rule; the margin is for safety (a truncation is counted, never fatal).
	e.decisionCap = 2*int(rules) + 8
	return e, nil
}

// newNativeEngine creates an engine: scale_engine_new, or scale_engine_new_with_rules with a
// rules file.
func newNativeEngine(spec engineSpec) (*nativeEngine, error) {
	return construct(spec, func(a *ctorArgs) C.scale_status_t {
		if a.withRules {
			return C.scale_engine_new_with_rules(a.settings, a.settingsLen, a.rules, a.rulesLen, a.out, a.msg, msgCap, a.msgLen)
		}
		return C.scale_engine_new(a.settings, a.settingsLen, a.out, a.msg, msgCap, a.msgLen)
	})
}

// restoreNativeEngine rebuilds an engine from the snapshot file at path:
// scale_engine_restore_from_file, or scale_engine_restore_from_file_with_rules with a rules file.
func restoreNativeEngine(spec engineSpec, path string) (*nativeEngine, error) {
	e, err := construct(spec, func(a *ctorArgs) C.scale_status_t {
		p, pl := stringPtr(path), C.size_t(len(path))
		if a.withRules {
			return C.scale_engine_restore_from_file_with_rules(a.settings, a.settingsLen, a.rules, a.rulesLen, p, pl, a.out, a.msg, msgCap, a.msgLen)
		}
		return C.scale_engine_restore_from_file(a.settings, a.settingsLen, p, pl, a.out, a.msg, msgCap, a.msgLen)
	})
	runtime.KeepAlive(path)
	return e, err
}

// Close frees the handle: idempotent, waits for calls in flight.
func (e *nativeEngine) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e._ptr == nil {
		return
	}
	C.scale_engine_free(e._ptr)
	e._ptr = nil
	runtime.SetFinalizer(e, nil)
}

func (e *nativeEngine) intern(service, operation string) (uint32, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e._ptr == nil {
		return 0, errClosed
	}
	var id C.uint32_t
	st := C.scale_engine_intern(e.ptr(), stringPtr(service), C.size_t(len(service)), stringPtr(operation), C.size_t(len(operation)), &id)
	runtime.KeepAlive(e)
	runtime.KeepAlive(service)
	runtime.KeepAlive(operation)
	if st != C.SCALE_STATUS_OK {
		return 0, statusError(st)
	}
	return uint32(id), nil
}

// pinArrays pins b's arrays and raw for the engine calls of one batch (their structs point at
// them); unpinArrays releases them.
func (b *batch) pinArrays(raw rawDecisions, lateKeep []uint32) {
	in, out := &b.c.pinIn, &b.c.pinOut
	in.Pin(&b.keyIDs[0])
	in.Pin(&b.startNs[0])
	in.Pin(&b.endNs[0])
	in.Pin(&b.traceIDs[0])
	in.Pin(&b.spanIDs[0])
	out.Pin(&b.scores[0])
	out.Pin(&b.keep[0])
	out.Pin(&b.skip[0])
	out.Pin(&raw[0])
	if len(lateKeep) > 0 {
		out.Pin(&lateKeep[0])
	}
}

func (b *batch) unpinArrays() {
	b.c.pinIn.Unpin()
	b.c.pinOut.Unpin()
}

// args fills the argument structs of one engine call on spans lo..hi of b (hi > lo; their
// outputs at the same indices), with room for len(dec) decisions and len(late) late marks
// (none: NULL, 0). The arrays must be pinned (pinArrays).
func (b *batch) args(nowNs uint64, lo, hi int, dec rawDecisions, late []uint32) (*C.scale_span_batch_t, *C.scale_batch_out_t) {
	if b.c.args == nil {
		b.c.args = new(cArgs)
	}
	a := b.c.args
	a.in = C.scale_span_batch_t{
		now_ns:    C.uint64_t(nowNs),
		n:         C.size_t(hi - lo),
		key_ids:   (*C.uint32_t)(unsafe.Pointer(&b.keyIDs[lo])),
		start_ns:  (*C.uint64_t)(unsafe.Pointer(&b.startNs[lo])),
		end_ns:    (*C.uint64_t)(unsafe.Pointer(&b.endNs[lo])),
		trace_ids: (*C.uint8_t)(unsafe.Pointer(&b.traceIDs[16*lo])),
		span_ids:  (*C.uint8_t)(unsafe.Pointer(&b.spanIDs[8*lo])),
	}
	a.out = C.scale_batch_out_t{
		scores:        (*C.double)(unsafe.Pointer(&b.scores[lo])),
		keep:          (*C.uint8_t)(unsafe.Pointer(&b.keep[lo])),
		skip:          (*C.scale_skip_t)(unsafe.Pointer(&b.skip[lo])),
		decisions:     unsafe.SliceData(dec),
		decisions_cap: C.size_t(len(dec)),
		late_keep:     (*C.uint32_t)(unsafe.Pointer(unsafe.SliceData(late))),
		late_keep_cap: C.size_t(len(late)),
	}
	return &a.in, &a.out
}

// process is the hot path: b's flat arrays (plain values; read and written during the calls
// only) go to the engine in chunks of at most chunkSpans spans (scale_engine_process_chunk),
// so that no cgo call outlasts the scheduler's patience; the engine gives every result as one
// call per batch would, with the decisions of the whole batch, conflated, after the last chunk.
// A batch that fits one chunk is one scale_engine_process call. An error on any chunk fails
// the whole batch.
func (e *nativeEngine) process(nowNs uint64, b *batch) (int, error) {
	n := len(b.keyIDs)
	b.decisions = b.decisions[:0]
	if n == 0 {
		return 0, nil
	}
	if cap(b.raw) < e.decisionCap {
		b.raw = make(rawDecisions, e.decisionCap)
	}
	raw := b.raw[:cap(b.raw)]
	chunk := e.chunkSpans
	chunked := chunk > 0 && n > chunk
	var late []uint32 // a chunked batch's last chunk lists its late marks: room for all n
	if chunked {
		b.lateKeep = grow(b.lateKeep, n)
		late = b.lateKeep
	}
	e.mu.RLock()
	if e._ptr == nil {
		e.mu.RUnlock()
		return 0, errClosed
	}
	b.pinArrays(raw, late)
	var st C.scale_status_t
	if !chunked {
		in, out := b.args(nowNs, 0, n, raw, nil)
		st = C.scale_engine_process(e.ptr(), in, out)
	} else {
		e.batchMu.Lock()
		for lo := 0; lo < n; lo += chunk {
			hi := min(lo+chunk, n)
			last, dec, lk := C.uint8_t(0), rawDecisions(nil), []uint32(nil)
			if hi == n {
				last, dec, lk = 1, raw, late
			}
			in, out := b.args(nowNs, lo, hi, dec, lk)
			st = C.scale_engine_process_chunk(e.ptr(), in, C.size_t(lo), last, out)
			if st != C.SCALE_STATUS_OK {
				break // an error, or DECISIONS_TRUNCATED (only the last chunk has decisions)
			}
		}
		e.batchMu.Unlock()
	}
	b.unpinArrays()
	e.mu.RUnlock()
	runtime.KeepAlive(e)
	runtime.KeepAlive(b)
	lost, nOut := 0, int(b.c.args.out.decisions_len)
	nLate := 0
	if chunked {
		nLate = min(int(b.c.args.out.late_keep_len), len(late))
	}
	*b.c.args = cArgs{} // no stale (unpinned) pointers
	switch st {
	case C.SCALE_STATUS_OK:
	case C.SCALE_STATUS_DECISIONS_TRUNCATED:
		lost, nOut = nOut-len(raw), len(raw)
	default:
		return 0, statusError(st)
	}
	// Spans of earlier chunks the engine marked at the batch's end (the last chunk's own are
	// already in keep).
	for _, idx := range late[:nLate] {
		if int(idx) < n {
			b.keep[idx] = 1
		}
	}
	for i := range nOut {
		d := &raw[i]
		b.decisions = append(b.decisions, decision{
			ruleIndex:   uint32(d.rule_index),
			count:       uint32(d.count),
			windowMs:    float64(d.window_ms),
			thresholdMs: float64(d.threshold_ms),
			observedMs:  float64(d.observed_ms),
			score:       float64(d.score),
			loadRatio:   float64(d.load_ratio),
			timeNs:      uint64(d.time_ns),
			spanIndex:   uint32(d.span_index),
			conflated:   uint32(d.conflated),
			traceID:     *(*[16]byte)(unsafe.Pointer(&d.trace_id.idx)),
			spanID:      *(*[8]byte)(unsafe.Pointer(&d.span_id.idx)),
			action:      uint8(d.action),
		})
	}
	return lost, nil
}

func (e *nativeEngine) ruleNames() ([]string, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e._ptr == nil {
		return nil, errClosed
	}
	var count C.size_t
	if st := C.scale_engine_rule_count(e.ptr(), &count); st != C.SCALE_STATUS_OK {
		return nil, statusError(st)
	}
	names := make([]string, 0, int(count))
	buf := make([]byte, 256)
	for i := range int(count) {
		var n C.size_t
		st := C.scale_engine_rule_name(e.ptr(), C.size_t(i), (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
		if st == C.SCALE_STATUS_BUFFER_TOO_SMALL {
			buf = make([]byte, int(n))
			st = C.scale_engine_rule_name(e.ptr(), C.size_t(i), (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
		}
		if st != C.SCALE_STATUS_OK {
			return nil, statusError(st)
		}
		names = append(names, string(buf[:n]))
	}
	runtime.KeepAlive(e)
	return names, nil
}

func (e *nativeEngine) ruleReports(nowNs uint64) ([]ruleReport, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e._ptr == nil {
		return nil, errClosed
	}
	raw := make([]C.scale_rule_report_t, 16)
	names := make([]byte, 1024)
	var n, nl C.size_t
	// Sizes can grow between two calls (a new service's window): retry with what was asked.
	for range 4 {
		st := C.scale_engine_rule_reports(e.ptr(), C.uint64_t(nowNs),
			(*C.scale_rule_report_t)(unsafe.Pointer(&raw[0])), C.size_t(len(raw)),
			(*C.uint8_t)(unsafe.Pointer(&names[0])), C.size_t(len(names)), &n, &nl)
		if st == C.SCALE_STATUS_BUFFER_TOO_SMALL {
			raw = make([]C.scale_rule_report_t, max(int(n), 1)+16)
			names = make([]byte, max(int(nl), 1)+1024)
			continue
		}
		if st != C.SCALE_STATUS_OK {
			return nil, statusError(st)
		}
		out := make([]ruleReport, int(n))
		for i := range out {
			r := &raw[i]
			out[i] = ruleReport{
				ruleIndex:   uint32(r.rule_index),
				count:       uint32(r.count),
				inWindow:    uint32(r.in_window),
				service:     string(names[int(r.service_offset) : int(r.service_offset)+int(r.service_len)]),
				sinceNs:     uint64(r.since_ns),
				untilNs:     uint64(r.until_ns),
				matched:     uint64(r.matched),
				breaches:    uint64(r.breaches),
				windowMs:    float64(r.window_ms),
				thresholdMs: float64(r.threshold_ms),
				p50Ms:       float64(r.p50_ms),
				p90Ms:       float64(r.p90_ms),
				p99Ms:       float64(r.p99_ms),
				maxMs:       float64(r.max_ms),
			}
		}
		runtime.KeepAlive(e)
		return out, nil
	}
	return nil, statusError(C.SCALE_STATUS_BUFFER_TOO_SMALL)
}

func (e *nativeEngine) snapshotToFile(path string) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e._ptr == nil {
		return errClosed
	}
	msg := make([]byte, 4096)
	var n C.size_t
	st := C.scale_engine_snapshot_to_file(e.ptr(), stringPtr(path), C.size_t(len(path)), (*C.char)(unsafe.Pointer(&msg[0])), C.size_t(len(msg)), &n)
	runtime.KeepAlive(e)
	runtime.KeepAlive(path)
	if st != C.SCALE_STATUS_OK {
		return newError(st, msg[:n])
	}
	return nil
}
