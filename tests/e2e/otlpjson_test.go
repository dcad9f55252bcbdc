package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
)

// The subset of OTLP/JSON (ExportTraceServiceRequest, as the file exporter writes it: one
// request per line) that the assertions read.

type anyValue struct {
	StringValue *string      `json:"stringValue,omitempty"`
	IntValue    *json.Number `json:"intValue,omitempty"`    // int64 is a JSON string in OTLP/JSON
	DoubleValue *flexFloat   `json:"doubleValue,omitempty"` // a number, or "NaN", "Infinity", ...
	BoolValue   *bool        `json:"boolValue,omitempty"`
}

// flexFloat is an OTLP/JSON double: a JSON number, or a string for NaN and the infinities.
type flexFloat float64

func (f *flexFloat) UnmarshalJSON(b []byte) error {
	var v float64
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		p, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		v = p
	} else if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*f = flexFloat(v)
	return nil
}

type keyValue struct {
	Key   string   `json:"key"`
	Value anyValue `json:"value"`
}

type attrs []keyValue

func (a attrs) get(key string) (anyValue, bool) {
	for _, kv := range a {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return anyValue{}, false
}

func (a attrs) str(key string) string {
	if v, ok := a.get(key); ok && v.StringValue != nil {
		return *v.StringValue
	}
	return ""
}

func (a attrs) double(key string) (float64, bool) {
	v, ok := a.get(key)
	if !ok || v.DoubleValue == nil {
		return 0, false
	}
	return float64(*v.DoubleValue), true
}

func (a attrs) int(key string) (int64, bool) {
	v, ok := a.get(key)
	if !ok || v.IntValue == nil {
		return 0, false
	}
	n, err := v.IntValue.Int64()
	return n, err == nil
}

type event struct {
	Name       string `json:"name"`
	TimeNanos  string `json:"timeUnixNano"`
	Attributes attrs  `json:"attributes"`
}

type jsonSpan struct {
	TraceID    string  `json:"traceId"`
	SpanID     string  `json:"spanId"`
	Name       string  `json:"name"`
	Start      string  `json:"startTimeUnixNano"`
	End        string  `json:"endTimeUnixNano"`
	Attributes attrs   `json:"attributes"`
	Events     []event `json:"events"`
}

type request struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes attrs `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []jsonSpan `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

// span is one span of the output, flattened, in the order the collector wrote it.
type span struct {
	Service    string
	Phase      string // the resource attribute e2e.phase set by the test's senders
	Name       string
	TraceID    string
	SpanID     string
	DurationMs float64
	Attributes attrs
	Events     []event
}

// id identifies a span within a test: the demo replays the same trace and span ids in each pass.
func (s span) id() string { return s.Phase + "/" + s.TraceID + "/" + s.SpanID }

func (s span) score() (float64, bool) { return s.Attributes.double("scale.anomaly.score") }

func (s span) decisions() []event {
	var out []event
	for _, e := range s.Events {
		if e.Name == "scale.decision" {
			out = append(out, e)
		}
	}
	return out
}

// readSpans reads a file exporter's output (OTLP/JSON lines) in file order.
func readSpans(path string) ([]span, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var out []span
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var req request
			if uerr := json.Unmarshal(line, &req); uerr != nil {
				return nil, fmt.Errorf("%s line %d: %v", path, lineNo, uerr)
			}
			for _, rs := range req.ResourceSpans {
				svc := rs.Resource.Attributes.str("service.name")
				phase := rs.Resource.Attributes.str("e2e.phase")
				for _, ss := range rs.ScopeSpans {
					for _, s := range ss.Spans {
						if s.Name == "scale.report" {
							// The processor's evidence reports for the daemon, not spans of the
							// workload (rust/scaler/tests/it/evidence.rs tests them end to end).
							continue
						}
						st, _ := strconv.ParseInt(s.Start, 10, 64)
						en, _ := strconv.ParseInt(s.End, 10, 64)
						out = append(out, span{
							Service: svc, Phase: phase, Name: s.Name, TraceID: s.TraceID, SpanID: s.SpanID,
							DurationMs: float64(en-st) / 1e6, Attributes: s.Attributes, Events: s.Events,
						})
					}
				}
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// demoTraces loads the recorded OpenTelemetry demo traces (one ExportTraceServiceRequest per
// line, gzip) as generic JSON, and the earliest span start in them.
func demoTraces(path string) ([]map[string]any, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, 0, err
	}
	dec := json.NewDecoder(zr)
	dec.UseNumber()
	var traces []map[string]any
	minStart := int64(0)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			return nil, 0, fmt.Errorf("%s: trace %d: %v", path, len(traces)+1, err)
		}
		forEachSpan(m, func(_ string, sp map[string]any) {
			if st := nanos(sp["startTimeUnixNano"]); st > 0 && (minStart == 0 || st < minStart) {
				minStart = st
			}
		})
		traces = append(traces, m)
	}
	return traces, minStart, nil
}

// forEachSpan calls fn with each span of a generic ExportTraceServiceRequest and its service.
func forEachSpan(req map[string]any, fn func(service string, sp map[string]any)) {
	for _, rs := range list(req["resourceSpans"]) {
		rsm, _ := rs.(map[string]any)
		svc := ""
		if res, ok := rsm["resource"].(map[string]any); ok {
			for _, kv := range list(res["attributes"]) {
				kvm, _ := kv.(map[string]any)
				if kvm["key"] == "service.name" {
					if v, ok := kvm["value"].(map[string]any); ok {
						svc, _ = v["stringValue"].(string)
					}
				}
			}
		}
		for _, ss := range list(rsm["scopeSpans"]) {
			ssm, _ := ss.(map[string]any)
			for _, sp := range list(ssm["spans"]) {
				if spm, ok := sp.(map[string]any); ok {
					fn(svc, spm)
				}
			}
		}
	}
}

func list(v any) []any { l, _ := v.([]any); return l }

// nanos reads an OTLP/JSON fixed64 (a string, or a number from other encoders).
func nanos(v any) int64 {
	switch x := v.(type) {
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	case json.Number:
		n, _ := x.Int64()
		return n
	}
	return 0
}
