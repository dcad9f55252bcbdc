// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"bufio"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"
	"go.yaml.in/yaml/v3"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

func TestLoadConfig(t *testing.T) {
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", "config.yaml"))
	require.NoError(t, err)

	custom := createDefaultConfig().(*Config)
	custom.Mode = ModePaper
	minScore := 0.6
	custom.Sampler = SamplerConfig{NTrees: 16, Height: 8, WindowSize: 175, KeepBudget: 0.01, MinScore: &minScore, MaxDuration: 50 * time.Second, TrainSize: 5000, Seed: 7}
	custom.Keys = KeysConfig{MaxKeys: 2000}
	custom.Keyed = KeyedConfig{Memory: 30 * time.Minute, MinKeyCount: 4, ContextWindow: 5 * time.Second, Sides: SidesBoth}
	custom.RulesFile = "testdata/rules.yaml"
	custom.SnapshotPath = "/var/lib/otelcol/scale/model.snapshot"
	custom.SnapshotInterval = time.Minute

	inline := createDefaultConfig().(*Config)
	inline.Rules = []map[string]any{{
		"name":   "checkout-latency",
		"match":  map[string]any{"service": "checkout", "operation": "oteldemo.CheckoutService/PlaceOrder"},
		"when":   map[string]any{"duration_above": "500ms"},
		"count":  5,
		"window": "30s",
		"action": map[string]any{
			"kind":   "auto",
			"target": map[string]any{"kind": "Deployment", "namespace": "otel-demo", "name": "checkout"},
			"max":    10,
		},
	}}

	tests := []struct {
		id       component.ID
		expected *Config
	}{
		{id: component.NewID(metadata.Type), expected: createDefaultConfig().(*Config)},
		{id: component.NewIDWithName(metadata.Type, "custom"), expected: custom},
		{id: component.NewIDWithName(metadata.Type, "inline_rules"), expected: inline},
	}
	for _, tt := range tests {
		t.Run(tt.id.String(), func(t *testing.T) {
			cfg := createDefaultConfig()
			sub, err := cm.Sub(tt.id.String())
			require.NoError(t, err)
			require.NoError(t, sub.Unmarshal(cfg))
			require.NoError(t, confmap.Validate(cfg))
			assert.Equal(t, tt.expected, cfg)
		})
	}
}

// expectations reads the "# expect: ..." lines at the top of a testdata file.
func expectations(t *testing.T, path string) []string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if msg, ok := strings.CutPrefix(sc.Text(), "# expect: "); ok {
			out = append(out, msg)
		}
	}
	require.NotEmpty(t, out, "%s has no '# expect:' line", path)
	return out
}

func TestInvalidConfigs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "invalid_*.yaml"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 15)
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			cm, err := confmaptest.LoadConf(file)
			require.NoError(t, err)
			sub, err := cm.Sub(component.NewID(metadata.Type).String())
			require.NoError(t, err)
			cfg := createDefaultConfig()
			err = sub.Unmarshal(cfg)
			if err == nil {
				err = confmap.Validate(cfg)
			}
			require.Error(t, err)
			for _, want := range expectations(t, file) {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestEngineYAMLFromConfig(t *testing.T) {
	cfg := createDefaultConfig().(*Config)
	cfg.Sampler.MaxDuration = 1500 * time.Microsecond
	spec, err := cfg.engineSpec()
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(spec.settings, &doc))
	assert.Equal(t, "keyed", doc["mode"])
	sampler := doc["sampler"].(map[string]any)
	assert.Equal(t, "1.5ms", sampler["max_duration"], "the one duration grammar")
	assert.Equal(t, 0.01, sampler["keep_budget"])
	assert.NotContains(t, sampler, "min_score", "the budget unless min_score is set")
	keyed := doc["keyed"].(map[string]any)
	assert.Equal(t, "10m0s", keyed["memory"])
	assert.Equal(t, "5s", keyed["context_window"])
	minScore := 0.9
	cfg.Sampler.MinScore = &minScore
	spec, err = cfg.engineSpec()
	require.NoError(t, err)
	doc = nil
	require.NoError(t, yaml.Unmarshal(spec.settings, &doc))
	sampler = doc["sampler"].(map[string]any)
	assert.Equal(t, 0.9, sampler["min_score"])
	assert.NotContains(t, sampler, "keep_budget")
	cfg.Sampler.MinScore = nil
	assert.NotContains(t, doc, "rules")
	assert.Nil(t, spec.rules)

	// With a rules file: the file's text is passed as is, apart from the settings (libscale's
	// *_with_rules constructors take both; nothing merges the two documents).
	cfg.RulesFile = filepath.Join("testdata", "rules.yaml")
	spec, err = cfg.engineSpec()
	require.NoError(t, err)
	text, _ := os.ReadFile(cfg.RulesFile)
	assert.Equal(t, text, spec.rules)
	doc = nil
	require.NoError(t, yaml.Unmarshal(spec.settings, &doc))
	assert.NotContains(t, doc, "rules")
}

func TestDefaultsMatchTheEngine(t *testing.T) {
	// configs/engine/default.yaml is the engine's defaults, spelled out.
	text, err := os.ReadFile(filepath.Join("..", "configs", "engine", "default.yaml"))
	require.NoError(t, err)
	var doc engineYAML
	var raw map[string]any
	require.NoError(t, yaml.Unmarshal(text, &raw))
	delete(raw["sampler"].(map[string]any), "max_duration")
	delete(raw["keyed"].(map[string]any), "memory")
	delete(raw["keyed"].(map[string]any), "context_window")
	fixed, _ := yaml.Marshal(raw)
	require.NoError(t, yaml.Unmarshal(fixed, &doc))
	cfg := createDefaultConfig().(*Config)
	assert.Equal(t, doc.Mode, cfg.Mode)
	assert.Equal(t, doc.Sampler.NTrees, cfg.Sampler.NTrees)
	assert.Equal(t, doc.Sampler.Height, cfg.Sampler.Height)
	assert.Equal(t, doc.Sampler.WindowSize, cfg.Sampler.WindowSize)
	assert.Equal(t, doc.Sampler.KeepBudget, cfg.Sampler.KeepBudget)
	assert.Nil(t, cfg.Sampler.MinScore)
	assert.Equal(t, doc.Sampler.TrainSize, cfg.Sampler.TrainSize)
	assert.Equal(t, doc.Sampler.Seed, cfg.Sampler.Seed)
	assert.Equal(t, doc.Keys.MaxKeys, cfg.Keys.MaxKeys)
	assert.Equal(t, doc.Keyed.MinKeyCount, cfg.Keyed.MinKeyCount)
	assert.Equal(t, doc.Keyed.Sides, cfg.Keyed.Sides)
	assert.Contains(t, string(text), "memory: 10m")
	assert.Equal(t, 10*time.Minute, cfg.Keyed.Memory)
	assert.Contains(t, string(text), "context_window: 5s")
	assert.Equal(t, 5*time.Second, cfg.Keyed.ContextWindow)
	assert.Contains(t, string(text), "max_duration: 50s")
	assert.Equal(t, 50*time.Second, cfg.Sampler.MaxDuration)
}

// The one duration grammar: the cases the engine checks (rust/core/testdata/durations.txt) read
// the same here.
func TestDurationsSharedWithEngine(t *testing.T) {
	raw, err := os.ReadFile("../rust/core/testdata/durations.txt")
	require.NoError(t, err)
	n := 0
	for _, line := range strings.Split(strings.TrimRight(string(raw), "\n"), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		input, want, ok := strings.Cut(line, "\t")
		require.True(t, ok, line)
		d, err := time.ParseDuration(input)
		if want == "error" {
			require.Error(t, err, "%q", input)
		} else {
			require.NoError(t, err, "%q", input)
			ms, perr := strconv.ParseFloat(want, 64)
			require.NoError(t, perr)
			require.InDelta(t, ms, float64(d)/1e6, 1e-9*max(1, math.Abs(ms)), "%q", input)
		}
		n++
	}
	require.Greater(t, n, 20)
}

func TestBareNumberDurationsAreRefused(t *testing.T) {
	cfg := createDefaultConfig().(*Config)
	err := cfg.Unmarshal(confmap.NewFromStringMap(map[string]any{
		"report_interval": 500,
		"sampler":         map[string]any{"max_duration": 0},
		"keyed":           map[string]any{"memory": 1.5},
	}))
	require.ErrorContains(t, err, "report_interval: a duration needs a unit")
	require.ErrorContains(t, err, "keyed.memory: a duration needs a unit")
	require.NotContains(t, err.Error(), "max_duration")

	cfg = createDefaultConfig().(*Config)
	require.NoError(t, cfg.Unmarshal(confmap.NewFromStringMap(map[string]any{
		"report_interval":   "1m30s",
		"snapshot_interval": 0,
	})))
	require.Equal(t, 90*time.Second, cfg.ReportInterval)
	require.Equal(t, time.Duration(0), cfg.SnapshotInterval)
}
