package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What the test sends and what the collector is configured with.
const (
	service       = "e2e-app"     // telemetrygen's --service, for normal and slow spans alike
	ruleName      = "e2e-latency" // the rule under test
	ruleOperation = "okey-dokey-0"
	ruleCount     = 10 // N
	ruleWindow    = 5 * time.Minute
	ruleThreshold = 200 * time.Millisecond // T
	trainSize     = 500                    // telemetrygen scenario: the model trains on the first 500 spans
	windowSize    = 100

	normalTraces   = 1500 // telemetrygen traces of 2 spans (lets-go + okey-dokey-0), 5 ms each
	normalDuration = 5 * time.Millisecond
	slowTraces     = 35 // 2 spans each, 500 ms: 35 breaches of the rule, decisions at 10, 20, 30
	slowDuration   = 500 * time.Millisecond

	inflated        = "productcatalogservice" // the demo service whose spans are delayed
	inflateDelay    = 200 * time.Millisecond  // added to each of its spans in the faulty pass
	demoPass        = 10 * time.Second        // one pass over the recording takes this long
	tracesPerPost   = 25                      // demo traces merged into one OTLP/HTTP request
	demoTrainSize   = 1000                    // demo scenario: the engine's defaults
	demoWindowSize  = 250
	demoSpansPerRun = 24023
)

const collectorConfig = `
extensions:
  health_check:
    endpoint: 127.0.0.1:{{health}}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{{grpc}}
      http:
        endpoint: 127.0.0.1:{{http}}

processors:
  scale:
    sampler:
      train_size: {{train_size}}
      window_size: {{window_size}}
    rules:
      - name: {{rule}}
        match: { service: {{service}}, operation: {{operation}} }
        when: { duration_above: {{threshold_ms}}ms }
        count: {{count}}
        window: {{window_ms}}ms
        action:
          kind: horizontal
          target: { kind: Deployment, namespace: e2e, name: {{service}} }
          max: 5

exporters:
  file/scale:
    path: {{dir}}/scale.jsonl
    format: json
    flush_interval: 100ms
  file/all:
    path: {{dir}}/all.jsonl
    format: json
    flush_interval: 100ms

service:
  telemetry:
    logs:
      level: info
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {{metrics}}
  extensions: [health_check]
  pipelines:
    traces/scale:
      receivers: [otlp]
      processors: [scale]
      exporters: [file/scale]
    traces/all:
      receivers: [otlp]
      exporters: [file/all]
`

// binary returns the path in env var name, or the fallback under the repository; the test
// fails (it does not skip) when neither exists: `make test-e2e` builds both.
func binary(t *testing.T, env, fallback, hint string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		p = fallback
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %v (run `make test-e2e`, or %s and set %s)", env, err, hint, env)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// collector is a running otelcol-scale.
type collector struct {
	cmd     *exec.Cmd
	log     string
	done    chan struct{}
	waitErr error
	grpc    string // host:port
	http    string // base URL
	health  string // URL
}

func (c *collector) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM (so the file exporters flush and close), then SIGKILL after 15 s.
func (c *collector) stop() error {
	if c.exited() {
		return c.waitErr
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return c.waitErr
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
		return errors.New("otelcol-scale did not stop within 15 s of SIGTERM; killed")
	}
}

func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func startCollector(t *testing.T, bin, dir string, trainSize, windowSize int) *collector {
	t.Helper()
	ports := map[string]int{"grpc": freePort(t), "http": freePort(t), "health": freePort(t), "metrics": freePort(t)}
	cfg := collectorConfig
	for k, v := range map[string]string{
		"grpc": strconv.Itoa(ports["grpc"]), "http": strconv.Itoa(ports["http"]),
		"health": strconv.Itoa(ports["health"]), "metrics": strconv.Itoa(ports["metrics"]),
		"train_size": strconv.Itoa(trainSize), "window_size": strconv.Itoa(windowSize),
		"rule": ruleName, "service": service, "operation": ruleOperation,
		"threshold_ms": strconv.FormatInt(ruleThreshold.Milliseconds(), 10),
		"count":        strconv.Itoa(ruleCount), "window_ms": strconv.FormatInt(ruleWindow.Milliseconds(), 10),
		"dir": dir,
	} {
		cfg = strings.ReplaceAll(cfg, "{{"+k+"}}", v)
	}
	cfgPath := filepath.Join(dir, "collector.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return launch(t, bin, dir, []string{cfgPath}, nil, ports)
}

// launch starts otelcol-scale with the config files (merged in order) and extra environment,
// and waits until health_check (at ports["health"]) answers.
func launch(t *testing.T, bin, dir string, configs, env []string, ports map[string]int) *collector {
	t.Helper()
	logPath := filepath.Join(dir, "collector.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, c := range configs {
		args = append(args, "--config", c)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The collector dies with the test process, even if the test binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &collector{
		cmd: cmd, log: logPath, done: make(chan struct{}),
		grpc:   fmt.Sprintf("127.0.0.1:%d", ports["grpc"]),
		http:   fmt.Sprintf("http://127.0.0.1:%d", ports["http"]),
		health: fmt.Sprintf("http://127.0.0.1:%d/", ports["health"]),
	}
	go func() { c.waitErr = cmd.Wait(); logf.Close(); close(c.done) }()
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		if err := c.stop(); err != nil && !t.Failed() {
			t.Logf("otelcol-scale exit: %v", err)
		}
		if t.Failed() {
			for _, c := range configs {
				b, _ := os.ReadFile(c)
				t.Logf("config %s:\n%s", c, b)
			}
			t.Logf("otelcol-scale log (last 60 lines of %s):\n%s", logPath, logTail(logPath, 60))
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		if c.exited() {
			t.Fatalf("otelcol-scale exited before it was healthy: %v", c.waitErr)
		}
		resp, err := client.Get(c.health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("otelcol-scale not healthy at %s within 60 s (last error: %v)", c.health, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// telemetrygen runs one bounded telemetrygen process against the collector's OTLP/gRPC port.
func telemetrygen(t *testing.T, bin string, c *collector, phase string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"traces",
		"--otlp-endpoint", c.grpc, "--otlp-insecure",
		"--service", service,
		"--otlp-attributes", fmt.Sprintf("e2e.phase=%q", phase),
		"--workers", "1", "--child-spans", "1",
	}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil || c.exited() {
		tail := string(out)
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		t.Fatalf("telemetrygen (%s) failed: %v; collector exited: %v\n%s", phase, err, c.exited(), tail)
	}
}

// replayDemo posts the recorded OpenTelemetry demo traces to the OTLP/HTTP JSON endpoint with
// timestamps shifted so that the first span starts now, tagged with e2e.phase, spread over
// demoPass (the engine's contexts average over seconds of its clock, so a pass takes seconds, as
// in life); delay is added to every span of the inflated service. Returns the spans sent per
// service.
func replayDemo(t *testing.T, c *collector, path, phase string, delay time.Duration) map[string]int {
	t.Helper()
	traces, minStart, err := demoTraces(path)
	if err != nil {
		t.Fatal(err)
	}
	shift := time.Now().UnixNano() - minStart
	sent := map[string]int{}
	// Each pass sends new traces: trace ids derived from the phase (span ids stay unique
	// within a trace), as a sampler that remembers its decisions per trace id would see them.
	traceIDs := map[string]string{}
	client := &http.Client{Timeout: 30 * time.Second}
	began := time.Now()
	deadline := began.Add(3 * time.Minute)
	for i := 0; i < len(traces); i += tracesPerPost {
		if due := began.Add(demoPass * time.Duration(i) / time.Duration(len(traces))); time.Now().Before(due) {
			time.Sleep(time.Until(due))
		}
		var rss []any
		for _, tr := range traces[i:min(i+tracesPerPost, len(traces))] {
			forEachSpan(tr, func(svc string, sp map[string]any) {
				st, en := nanos(sp["startTimeUnixNano"]), nanos(sp["endTimeUnixNano"])
				if svc == inflated && en >= st {
					en += delay.Nanoseconds()
				}
				if id, ok := sp["traceId"].(string); ok {
					if _, ok := traceIDs[id]; !ok {
						h := sha256.Sum256([]byte(phase + "/" + id))
						traceIDs[id] = hex.EncodeToString(h[:16])
					}
					sp["traceId"] = traceIDs[id]
				}
				sp["startTimeUnixNano"] = strconv.FormatInt(st+shift, 10)
				sp["endTimeUnixNano"] = strconv.FormatInt(en+shift, 10)
				for _, ev := range list(sp["events"]) {
					if evm, ok := ev.(map[string]any); ok {
						evm["timeUnixNano"] = strconv.FormatInt(nanos(evm["timeUnixNano"])+shift, 10)
					}
				}
				sent[svc]++
			})
			for _, rs := range list(tr["resourceSpans"]) {
				rsm, _ := rs.(map[string]any)
				res, _ := rsm["resource"].(map[string]any)
				if res == nil {
					res = map[string]any{}
					rsm["resource"] = res
				}
				res["attributes"] = append(list(res["attributes"]),
					map[string]any{"key": "e2e.phase", "value": map[string]any{"stringValue": phase}})
				rss = append(rss, rsm)
			}
		}
		body, err := json.Marshal(map[string]any{"resourceSpans": rss})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Post(c.http+"/v1/traces", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("replay %s: POST /v1/traces: %v", phase, err)
		}
		msg := new(bytes.Buffer)
		_, _ = msg.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("replay %s: POST /v1/traces: %s: %s", phase, resp.Status, msg.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("replay %s: not done within 3 min", phase)
		}
	}
	return sent
}

type tally struct{ all, kept int }

func (x tally) frac() float64 {
	if x.all == 0 {
		return math.NaN()
	}
	return float64(x.kept) / float64(x.all)
}

func (x tally) String() string {
	return fmt.Sprintf("%d/%d kept (%.1f %%)", x.kept, x.all, 100*x.frac())
}

// output is what the two file exporters wrote: every span received (`all`, in the order the
// collector processed them) and the spans the `scale` pipeline forwarded (`kept`).
type output struct {
	all    []span
	kept   []span
	byID   map[string]span // kept spans by trace/span id
	counts map[string]*tally
}

func (o *output) tally(key string, s span) {
	x := o.counts[key]
	if x == nil {
		x = &tally{}
		o.counts[key] = x
	}
	x.all++
	if _, ok := o.byID[s.id()]; ok {
		x.kept++
	}
}

func (o *output) get(key string) tally {
	if x := o.counts[key]; x != nil {
		return *x
	}
	return tally{}
}

// scenario starts otelcol-scale, runs the senders in order (each returns once the collector
// has answered every request it sent), stops the collector (the file exporters flush and close)
// and reads both outputs. Generic checks: every kept span was received, and carries a score in
// [0, 1] or a decision.
func scenario(t *testing.T, trainSize, windowSize int, send func(c *collector)) *output {
	t.Helper()
	otelcol := binary(t, "SCALE_OTELCOL", "../../_build/otelcol-scale/otelcol-scale", "`make collector`")
	dir := t.TempDir()
	c := startCollector(t, otelcol, dir, trainSize, windowSize)
	send(c)
	if err := c.stop(); err != nil {
		t.Fatalf("otelcol-scale did not stop cleanly: %v", err)
	}
	if keep := os.Getenv("SCALE_E2E_KEEP"); keep != "" {
		// For debugging: keep the config, the log and both outputs.
		to := filepath.Join(keep, t.Name())
		if err := os.MkdirAll(to, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"collector.yaml", "collector.log", "all.jsonl", "scale.jsonl"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
				_ = os.WriteFile(filepath.Join(to, f), b, 0o644)
			}
		}
		t.Logf("outputs kept in %s", to)
	}
	o := &output{byID: map[string]span{}, counts: map[string]*tally{}}
	var err error
	if o.all, err = readSpans(filepath.Join(dir, "all.jsonl")); err != nil {
		t.Fatal(err)
	}
	if o.kept, err = readSpans(filepath.Join(dir, "scale.jsonl")); err != nil {
		t.Fatal(err)
	}
	received := map[string]bool{}
	for _, s := range o.all {
		received[s.id()] = true
	}
	for _, s := range o.kept {
		o.byID[s.id()] = s
		if !received[s.id()] {
			t.Errorf("kept span %s (%s %q) is not among the received spans", s.id(), s.Service, s.Name)
		}
		sc, ok := s.score()
		if !ok && len(s.decisions()) == 0 {
			t.Errorf("kept span %s (%s %q) has no scale.anomaly.score and no scale.decision", s.id(), s.Service, s.Name)
		}
		if ok && !(sc >= 0 && sc <= 1) {
			t.Errorf("span %s: scale.anomaly.score %v outside [0, 1]", s.id(), sc)
		}
	}
	return o
}

// TestTelemetrygenSlowSpansAndDecisions: one telemetrygen process sends 3,000 normal spans
// (5 ms) of one service, then a second one sends 70 slow spans (500 ms) of the same service and
// span names, one span per request. The rule `okey-dokey-0 slower than 200 ms, 10 times within
// 5 min` must fire on breach 10, 20 and 30 (the window starts afresh after each), nowhere else.
func TestTelemetrygenSlowSpansAndDecisions(t *testing.T) {
	began := time.Now()
	tgen := binary(t, "SCALE_TELEMETRYGEN", filepath.Join(os.Getenv("HOME"), ".cache/scale/bin/telemetrygen"), "scripts/telemetrygen.sh")
	o := scenario(t, trainSize, windowSize, func(c *collector) {
		telemetrygen(t, tgen, c, "normal", "--traces", strconv.Itoa(normalTraces), "--rate", "2000",
			"--span-duration", normalDuration.String())
		telemetrygen(t, tgen, c, "slow", "--traces", strconv.Itoa(slowTraces), "--rate", "200",
			"--span-duration", slowDuration.String(), "--batch=false")
	})
	for _, s := range o.all {
		if s.Service != service || (s.Phase != "normal" && s.Phase != "slow") {
			t.Fatalf("unexpected span %s of service %q, e2e.phase %q", s.id(), s.Service, s.Phase)
		}
		o.tally(s.Phase, s)
	}
	normal, slow := o.get("normal"), o.get("slow")
	t.Logf("normal spans (5 ms):   %v", normal)
	t.Logf("slow spans (500 ms):   %v", slow)

	if normal.all != 2*normalTraces {
		t.Errorf("normal spans received: %d, want %d", normal.all, 2*normalTraces)
	}
	if slow.all != 2*slowTraces {
		t.Errorf("slow spans received: %d, want %d", slow.all, 2*slowTraces)
	}
	// A steady load keeps at most 1.5 × the keep budget (1 %; the first 500 spans only train
	// the model).
	if !(normal.frac() <= 0.015) {
		t.Errorf("normal spans: %v, want <= 1.5 %% kept (the keep budget is 1 %%)", normal)
	}
	// Every slow span is kept, with its anomaly score.
	if slow.kept != slow.all {
		t.Errorf("slow spans: %v, want all kept", slow)
	}
	for _, s := range o.kept {
		if _, ok := s.score(); s.Phase == "slow" && !ok {
			t.Errorf("slow span %s %q kept without scale.anomaly.score", s.id(), s.Name)
		}
	}

	// Decisions: exactly on breach N, 2N, ... in the order the collector processed the spans
	// (the `all` file), on the kept span, with the documented attributes; none anywhere else.
	breaches, fired := 0, 0
	for _, s := range o.all {
		isBreach := s.Name == ruleOperation && s.DurationMs > float64(ruleThreshold.Milliseconds())
		if isBreach {
			breaches++
		}
		k, isKept := o.byID[s.id()]
		var evs []event
		if isKept {
			evs = k.decisions()
		}
		shouldFire := isBreach && breaches%ruleCount == 0
		switch {
		case shouldFire && len(evs) != 1:
			t.Errorf("breach %d (span %s, kept %v): %d scale.decision events, want 1", breaches, s.id(), isKept, len(evs))
		case !shouldFire && len(evs) != 0:
			t.Errorf("span %s (%q, %s, %.1f ms) after %d breaches: unexpected scale.decision event",
				s.id(), s.Name, s.Phase, s.DurationMs, breaches)
		}
		for _, ev := range evs {
			fired++
			checkDecision(t, s, ev)
		}
	}
	if breaches != slowTraces {
		t.Errorf("breaches seen: %d, want %d", breaches, slowTraces)
	}
	if fired != slowTraces/ruleCount {
		t.Errorf("scale.decision events: %d, want %d (on breach 10, 20, 30)", fired, slowTraces/ruleCount)
	}
	t.Logf("rule breaches %d, scale.decision events %d (on breach 10, 20, 30); wall time %.1f s",
		breaches, fired, time.Since(began).Seconds())
}

// TestDemoReplayInflatedService replays the 1,876 recorded OpenTelemetry demo traces (24,023
// spans, 17 services) twice through OTLP/HTTP JSON, timestamps shifted to now, 10 s a pass: a
// normal pass (the model trains on it), then a pass in which every productcatalogservice span is
// 200 ms slower. The delayed service's spans must be mostly kept, the others mostly not.
func TestDemoReplayInflatedService(t *testing.T) {
	began := time.Now()
	demo := binary(t, "SCALE_DEMO_TRACES", "../../data/otel-demo/traces.jsonl.gz", "check out data/")
	var sent map[string]int
	o := scenario(t, demoTrainSize, demoWindowSize, func(c *collector) {
		replayDemo(t, c, demo, "demo-train", 0)
		sent = replayDemo(t, c, demo, "demo-inflated", inflateDelay)
	})
	for _, s := range o.all {
		key := s.Phase
		if s.Phase == "demo-inflated" {
			key += map[bool]string{true: ":" + inflated, false: ":others"}[s.Service == inflated]
		}
		o.tally(key, s)
	}
	for _, s := range o.kept {
		if n := len(s.decisions()); n != 0 {
			t.Errorf("span %s (%s %q): %d scale.decision events; no rule matches the demo", s.id(), s.Service, s.Name, n)
		}
	}
	train, pc, others := o.get("demo-train"), o.get("demo-inflated:"+inflated), o.get("demo-inflated:others")
	t.Logf("normal pass (training from span 1 to %d): %v", demoTrainSize, train)
	t.Logf("faulty pass, %s (+%v): %v", inflated, inflateDelay, pc)
	t.Logf("inflated pass, the other 16 services:     %v", others)

	if train.all != demoSpansPerRun || pc.all+others.all != demoSpansPerRun || pc.all != sent[inflated] {
		t.Errorf("spans received: normal pass %d, inflated pass %d (%s %d); want %d each (%s %d)",
			train.all, pc.all+others.all, inflated, pc.all, demoSpansPerRun, inflated, sent[inflated])
	}
	// Thresholds from the measured behaviour of the engine's defaults on this stream (86 % and
	// about 1 % offline, `scale eval` on the same replay), with a margin: the delayed service's
	// spans are rare for their keys (productcatalogservice's GetProduct usually takes 0.1 ms, and
	// 99 % of its spans under 100 ms) and are kept beyond the budget; the others stay near it.
	if !(pc.frac() >= 0.70) {
		t.Errorf("%s (+%v): %v, want >= 70 %% kept", inflated, inflateDelay, pc)
	}
	if !(others.frac() <= 0.05) {
		t.Errorf("the services not delayed: %v, want <= 5 %% kept", others)
	}
	if !(pc.frac() >= 10*others.frac()) {
		t.Errorf("%s kept %.1f %%, not 10 × the others' %.1f %%", inflated, 100*pc.frac(), 100*others.frac())
	}
	t.Logf("wall time %.1f s", time.Since(began).Seconds())
}

// TestNewServiceAfterTraining: services that first appear after the model was trained on other
// traffic must become known. Keyed mode learns every span of a key until its baseline has
// min_key_count spans (and one anomalous span in eight after that), so the demo's 1,044 new keys
// are learned: before that rule, 100 % of their spans were kept on both passes; now about a
// third are (the rest of the gap to a demo-trained model, 9 %, is the forest's slow adaptation).
func TestNewServiceAfterTraining(t *testing.T) {
	tgen := binary(t, "SCALE_TELEMETRYGEN", filepath.Join(os.Getenv("HOME"), ".cache/scale/bin/telemetrygen"), "scripts/telemetrygen.sh")
	demo := binary(t, "SCALE_DEMO_TRACES", "../../data/otel-demo/traces.jsonl.gz", "check out data/")
	o := scenario(t, trainSize, windowSize, func(c *collector) {
		telemetrygen(t, tgen, c, "normal", "--traces", strconv.Itoa(normalTraces), "--rate", "2000",
			"--span-duration", normalDuration.String())
		replayDemo(t, c, demo, "demo-1", 0)
		replayDemo(t, c, demo, "demo-2", 0)
	})
	for _, s := range o.all {
		o.tally(s.Phase, s)
	}
	first, second := o.get("demo-1"), o.get("demo-2")
	t.Logf("demo traces after training on telemetrygen: first pass %v, second pass %v", first, second)
	if !(second.frac() <= 0.40) {
		t.Errorf("the demo's normal traces, second time round: %v, want <= 40 %% kept", second)
	}
}

func checkDecision(t *testing.T, s span, ev event) {
	t.Helper()
	a := ev.Attributes
	fail := func(format string, args ...any) {
		t.Errorf("scale.decision on span %s: "+format, append([]any{s.id()}, args...)...)
	}
	if got := a.str("scale.rule"); got != ruleName {
		fail("scale.rule %q, want %q", got, ruleName)
	}
	if got := a.str("scale.action"); got != "horizontal" {
		fail("scale.action %q, want horizontal", got)
	}
	if got, ok := a.int("scale.count"); !ok || got != ruleCount {
		fail("scale.count %d (present %v), want %d", got, ok, ruleCount)
	}
	if got, ok := a.double("scale.window_ms"); !ok || got != float64(ruleWindow.Milliseconds()) {
		fail("scale.window_ms %v (present %v), want %d", got, ok, ruleWindow.Milliseconds())
	}
	if got, ok := a.double("scale.threshold_ms"); !ok || got != float64(ruleThreshold.Milliseconds()) {
		fail("scale.threshold_ms %v (present %v), want %d", got, ok, ruleThreshold.Milliseconds())
	}
	if got, ok := a.double("scale.observed_ms"); !ok || math.Abs(got-s.DurationMs) > 0.01 {
		fail("scale.observed_ms %v (present %v), want the span's duration %.3f ms", got, ok, s.DurationMs)
	}
	if got, ok := a.int("scale.conflated"); !ok || got != 0 {
		fail("scale.conflated %d (present %v), want 0 (one span per request)", got, ok)
	}
	if _, ok := a.get("scale.load_ratio"); ok {
		fail("scale.load_ratio present on a horizontal rule")
	}
	if sc, ok := a.double("scale.score"); !ok || !(sc >= 0 && sc <= 1) {
		fail("scale.score %v (present %v), want the slow span's score in [0, 1]", sc, ok)
	}
	if ev.TimeNanos == "" || ev.TimeNanos == "0" {
		fail("no timestamp")
	}
}
