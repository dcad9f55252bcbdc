package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	// KEDA's own client for external scalers, from the release whose proto
	// rust/scaler/proto/keda/ vendors.
	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// The KEDA scenario: a rule over telemetrygen's okey-dokey-0 spans, short enough to run in a
// test: 5 breaches (> 200 ms) within 10 s fire it; 20 s without firing is calm.
const (
	kedaRule      = "keda-latency"
	kedaNamespace = "e2e"
	kedaCount     = 5
	kedaWindow    = 10 * time.Second
	kedaQuiet     = 20 * time.Second
	kedaSlow      = 8 // slow traces of the fault: one breach each
	kedaReport    = 500 * time.Millisecond
)

var kedaRules = fmt.Sprintf(`rules:
  - name: %s
    match: { service: %s, operation: %s }
    when: { duration_above: 200ms }
    count: %d
    window: %s
    action:
      kind: horizontal
      target: { kind: Deployment, namespace: %s, name: %s }
      max: 5
      scale_down_after: %s
`, kedaRule, service, ruleOperation, kedaCount, kedaWindow, kedaNamespace, service, kedaQuiet)

const kedaCollector = `
extensions:
  health_check:
    endpoint: 127.0.0.1:{{health}}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{{grpc}}
processors:
  scale:
    sampler: { train_size: 200 }
    rules_file: {{rules}}
    report_interval: {{report}}
exporters:
  otlp_grpc/daemon:
    endpoint: 127.0.0.1:{{daemon}}
    tls: { insecure: true }
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [scale]
      exporters: [otlp_grpc/daemon]
`

// startDaemon runs `scale serve` (dry run) with the KEDA external scaler on, and waits for
// /readyz.
func startDaemon(t *testing.T, bin, dir, rules string, otlp, keda, metrics int) {
	t.Helper()
	logPath := filepath.Join(dir, "scale.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--rules", rules,
		"--listen", fmt.Sprintf("127.0.0.1:%d", otlp),
		"--keda-listen", fmt.Sprintf("127.0.0.1:%d", keda),
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metrics),
		"--evidence-timeout", "3s", "--tick", "200ms",
		"--audit", filepath.Join(dir, "audit.jsonl"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("scale serve log (last 40 lines):\n%s", logTail(logPath, 40))
		}
	})
	client := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", metrics)); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("scale serve not ready within 30 s:\n%s", logTail(logPath, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKedaExternalScaler (issue 14): `scale serve --keda-listen` driven by KEDA's own
// externalscaler client, on the evidence the real collector reports. IsActive has no answer
// (UNAVAILABLE) until reports cover a quiet period, then says false; a fault of 8 slow spans
// turns it true within one rule window; GetMetrics reports exactly those 8 breaches while they
// are in the window; IsActive turns false again a quiet period after the rule last fired, not
// before. StreamIsActive sends the same changes.
func TestKedaExternalScaler(t *testing.T) {
	scaleBin := binary(t, "SCALE_BIN", "../../target/release/scale", "`cargo build --workspace --release`")
	otelcol := binary(t, "SCALE_OTELCOL", "../../_build/otelcol-scale/otelcol-scale", "`make collector`")
	tgen := binary(t, "SCALE_TELEMETRYGEN", filepath.Join(os.Getenv("HOME"), ".cache/scale/bin/telemetrygen"), "scripts/telemetrygen.sh")
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(kedaRules), 0o644); err != nil {
		t.Fatal(err)
	}
	otlp, kedaPort, metrics := freePort(t), freePort(t), freePort(t)
	startDaemon(t, scaleBin, dir, rules, otlp, kedaPort, metrics)

	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", kedaPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	keda := pb.NewExternalScalerClient(conn)
	ref := &pb.ScaledObjectRef{Name: service, Namespace: kedaNamespace, ScalerMetadata: map[string]string{"rule": kedaRule}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	began := time.Now()

	// Before any evidence: no answer, with the reason.
	_, err = keda.IsActive(ctx, ref)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "no evidence report") {
		t.Fatalf("IsActive before any report: %v, want UNAVAILABLE (no evidence report)", err)
	}
	// The metric's spec needs no evidence.
	spec, err := keda.GetMetricSpec(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.MetricSpecs) != 1 || spec.MetricSpecs[0].MetricName != "scale-"+kedaRule+"-breaches" || spec.MetricSpecs[0].TargetSizeFloat != kedaCount {
		t.Errorf("GetMetricSpec: %v, want scale-%s-breaches with target %d", spec, kedaRule, kedaCount)
	}
	// Triggers that do not name a usable rule are refused, each with its own code.
	for _, c := range []struct {
		meta map[string]string
		ns   string
		want codes.Code
	}{
		{map[string]string{}, kedaNamespace, codes.InvalidArgument},
		{map[string]string{"rule": "no-such-rule"}, kedaNamespace, codes.NotFound},
		{map[string]string{"rule": kedaRule}, "other-namespace", codes.FailedPrecondition},
		{map[string]string{"rule": kedaRule, "metric": "p99"}, kedaNamespace, codes.InvalidArgument},
	} {
		_, err := keda.GetMetricSpec(ctx, &pb.ScaledObjectRef{Name: "x", Namespace: c.ns, ScalerMetadata: c.meta})
		if status.Code(err) != c.want {
			t.Errorf("GetMetricSpec(%v in %s): %v, want %v", c.meta, c.ns, err, c.want)
		}
	}

	// The collector, and ordinary traffic all along (5 ms spans, 50 traces/s).
	health, grpcPort := freePort(t), freePort(t)
	cfg := kedaCollector
	for k, v := range map[string]string{
		"health": strconv.Itoa(health), "grpc": strconv.Itoa(grpcPort), "rules": rules,
		"report": kedaReport.String(), "daemon": strconv.Itoa(otlp),
	} {
		cfg = strings.ReplaceAll(cfg, "{{"+k+"}}", v)
	}
	cfgPath := filepath.Join(dir, "collector.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c := launch(t, otelcol, dir, []string{cfgPath}, nil, map[string]int{"health": health, "grpc": grpcPort})
	load := exec.CommandContext(ctx, tgen, "traces", "--otlp-endpoint", c.grpc, "--otlp-insecure",
		"--service", service, "--workers", "1", "--child-spans", "1", "--rate", "50",
		"--duration", "150s", "--span-duration", normalDuration.String())
	load.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	load.Stdout, load.Stderr = io.Discard, io.Discard
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = load.Process.Kill(); _ = load.Wait() }()

	// isActive polls until IsActive answers want (other answers are logged once each).
	isActive := func(want bool, limit time.Duration) time.Time {
		t.Helper()
		seen := map[string]bool{}
		for deadline := time.Now().Add(limit); ; {
			r, err := keda.IsActive(ctx, ref)
			if err == nil && r.Result == want {
				return time.Now()
			}
			msg := fmt.Sprint(r.GetResult())
			if err != nil {
				msg = status.Convert(err).Message()
			}
			// Once per kind of answer (the seconds in the reasons change).
			kind := strings.Map(func(r rune) rune {
				if r >= '0' && r <= '9' {
					return -1
				}
				return r
			}, msg)
			if !seen[kind] {
				seen[kind] = true
				t.Logf("%5.1f s  IsActive: %s", time.Since(began).Seconds(), msg)
			}
			if time.Now().After(deadline) {
				t.Fatalf("IsActive did not answer %v within %v", want, limit)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	isActive(false, kedaQuiet+15*time.Second)
	t.Logf("%5.1f s  IsActive false: reports cover a quiet period without the rule firing", time.Since(began).Seconds())
	if got, err := keda.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: ref, MetricName: "scale-" + kedaRule + "-breaches"}); err != nil || got.MetricValues[0].MetricValueFloat != 0 {
		t.Errorf("GetMetrics before the fault: %v %v, want 0 breaches", got, err)
	}
	stream, err := keda.StreamIsActive(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	streamed := make(chan bool, 8)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(streamed)
				return
			}
			streamed <- r.Result
		}
	}()
	if v := <-streamed; v {
		t.Errorf("StreamIsActive's first answer: true, want false")
	}

	// The fault: 8 traces whose okey-dokey-0 takes 500 ms.
	fault := time.Now()
	telemetrygen(t, tgen, c, "slow", "--traces", strconv.Itoa(kedaSlow), "--rate", "8",
		"--span-duration", slowDuration.String(), "--batch=false")
	faultEnd := time.Now()
	active := isActive(true, 2*kedaWindow)
	t.Logf("%5.1f s  IsActive true %.1f s after the fault began (window %v)", time.Since(began).Seconds(), active.Sub(fault).Seconds(), kedaWindow)
	if d := active.Sub(fault); d > kedaWindow {
		t.Errorf("IsActive turned true %v after the fault began, want within one window (%v)", d, kedaWindow)
	}
	select {
	case v := <-streamed:
		if !v {
			t.Errorf("StreamIsActive after the fault: false, want true")
		}
	case <-time.After(5 * time.Second):
		t.Errorf("StreamIsActive sent nothing within 5 s of IsActive turning true")
	}
	// The metric: the fault's breaches, all in the window now (the last report may lag).
	var got float64
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		r, err := keda.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: ref, MetricName: "scale-" + kedaRule + "-breaches"})
		if err != nil {
			t.Fatalf("GetMetrics during the fault: %v", err)
		}
		if got = r.MetricValues[0].MetricValueFloat; got == kedaSlow {
			break
		}
	}
	if got != kedaSlow || time.Since(fault) > kedaWindow {
		t.Errorf("GetMetrics: %v breaches %.1f s after the fault began, want %d within the window", got, time.Since(fault).Seconds(), kedaSlow)
	}
	t.Logf("%5.1f s  GetMetrics: %v breaches (the fault's %d slow spans)", time.Since(began).Seconds(), got, kedaSlow)

	// Calm again a quiet period after the rule last fired (at the latest when the fault's last
	// breach was reported), not before it first fired.
	quiet := isActive(false, kedaQuiet+kedaWindow+10*time.Second)
	t.Logf("%5.1f s  IsActive false %.1f s after the fault ended (quiet period %v)", time.Since(began).Seconds(), quiet.Sub(faultEnd).Seconds(), kedaQuiet)
	if quiet.Sub(active) < kedaQuiet-time.Second {
		t.Errorf("IsActive false %v after it turned true, want a quiet period (%v)", quiet.Sub(active), kedaQuiet)
	}
	if quiet.Sub(faultEnd) > kedaQuiet+3*time.Second {
		t.Errorf("IsActive false only %v after the fault ended, want about a quiet period (%v)", quiet.Sub(faultEnd), kedaQuiet)
	}
	select {
	case v := <-streamed:
		if v {
			t.Errorf("StreamIsActive after the quiet period: true, want false")
		}
	case <-time.After(5 * time.Second):
		t.Errorf("StreamIsActive sent nothing within 5 s of IsActive turning false")
	}

	// The daemon counts the calls.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`scale_keda_requests_total{method="IsActive",code="ok"}`,
		`scale_keda_requests_total{method="IsActive",code="unavailable"}`,
		`scale_keda_requests_total{method="GetMetricSpec",code="not_found"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}
