// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
)

// The engine's defaults and limits (defaultNTrees, maxNTrees, ...) and defaultReportInterval are
// generated from scale-core into contract_gen.go. Only the processor's own default is here.
const defaultSnapshotInterval = 5 * time.Minute

// Which side of a key's latency is anomalous (`keyed.sides`).
const (
	// SidesSlower judges only spans slower than their key usually is.
	SidesSlower = "slower"
	// SidesBoth judges slower and faster spans.
	SidesBoth = "both"
)

// Featurization modes (`mode`).
const (
	// ModeKeyed judges each span against its own service::operation latency baseline.
	ModeKeyed = "keyed"
	// ModePaper reproduces the source paper's features (one-hot key + scaled duration).
	ModePaper = "paper"
)

// Config is the `scale` processor's configuration. Its engine settings mirror the engine's YAML
// (`configs/engine/default.yaml`); the processor turns them back into that YAML for libscale.
type Config struct {
	// Mode is the featurization: `keyed` (default: a span against its own key's baseline) or
	// `paper` (the source paper's features).
	Mode string `mapstructure:"mode"`

	// Sampler holds the Half-Space-Trees and keep-decision parameters.
	Sampler SamplerConfig `mapstructure:"sampler"`

	// Keys bounds the engine's service::operation key table.
	Keys KeysConfig `mapstructure:"keys"`

	// Keyed tunes the per-key latency baselines of `keyed` mode.
	Keyed KeyedConfig `mapstructure:"keyed"`

	// Rules are latency rules given inline, in the rules file's format (a list of rules; see the
	// repository README). Passed to the engine as YAML. Default: none. Use either Rules or
	// RulesFile.
	Rules []map[string]any `mapstructure:"rules"`

	// RulesFile is the path of a rules file (`rules:` only), the file shared with `scale serve`.
	// Errors in it cite its own lines. Default: none.
	RulesFile string `mapstructure:"rules_file"`

	// Drop removes the spans not judged anomalous (true, the default: a sampler). false is
	// annotate-only: every span passes, each scored one carrying `scale.anomaly.score` and
	// `scale.anomalous` (a bool: would have been kept), decisions still attached, for a
	// downstream sampler such as tail_sampling to decide on (configs/collector/tail-sampling.yaml).
	// With false, sampler.keep_budget counts traces: the engine measures spans per trace and
	// marks about keep_budget of ordinary traces (a trace with any span marked), not of spans.
	Drop bool `mapstructure:"drop"`

	// SnapshotPath is where the engine's state (model, keys, baselines, rule windows) is saved
	// and restored from at start, so a restart does not forget. Empty (default) disables
	// snapshots.
	SnapshotPath string `mapstructure:"snapshot_path"`

	// InitialSnapshot is the path of a read-only snapshot (written by `scale train`, e.g. a
	// mounted ConfigMap) that the engine starts from when it has no state of its own at
	// SnapshotPath, so that a new replica judges spans from the first one. A damaged snapshot,
	// or one taken under another engine configuration, is logged and counted
	// (processor_scale_initial_snapshot_errors) and the engine starts cold. Default: none.
	InitialSnapshot string `mapstructure:"initial_snapshot"`

	// SnapshotInterval is how often a snapshot is written while running (one is always written
	// at shutdown). 0 writes only at shutdown. Default 5m. Needs SnapshotPath.
	SnapshotInterval time.Duration `mapstructure:"snapshot_interval"`

	// ReportInterval is how often every rule's evidence (spans matched, breaches, their
	// latency) is sent downstream as `scale.report` spans, so that the daemon scales down on
	// evidence of healthy latency rather than on silence. Default 10s; 0 sends none (the daemon
	// then never scales down the rules' targets). Only with rules.
	ReportInterval time.Duration `mapstructure:"report_interval"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// SamplerConfig holds the sampler parameters (the source paper's six, plus the seed).
type SamplerConfig struct {
	// NTrees is the number of Half-Space-Trees in the forest (1-1000). Default 10.
	NTrees int `mapstructure:"n_trees"`
	// Height is the tree height: height+1 levels, 2^(height+1)-1 nodes per tree (1-20).
	// Default 8. Memory: 24 · n_trees · (2^(height+1) − 1) bytes.
	Height int `mapstructure:"height"`
	// WindowSize is the number of spans per tumbling mass window (1-10,000,000). Default 250.
	WindowSize int `mapstructure:"window_size"`
	// KeepBudget is the share of ordinary traffic to keep (0 < x < 1): the keep threshold is
	// calibrated online to it, on any system. Default 0.01. Not used when MinScore is set.
	KeepBudget float64 `mapstructure:"keep_budget"`
	// MinScore, when set, is a fixed keep threshold instead of the budget: a span is kept iff
	// its anomaly score is at least this (0-1). Default: unset.
	MinScore *float64 `mapstructure:"min_score"`
	// MaxDuration caps span durations (a duration, > 0). Default 50s.
	MaxDuration time.Duration `mapstructure:"max_duration"`
	// TrainSize is the number of spans only learned before any keep decision (>= 0). Default 1000.
	TrainSize int64 `mapstructure:"train_size"`
	// Seed seeds tree construction. Default 42.
	Seed uint64 `mapstructure:"seed"`
	// prevent unkeyed literal initialization
	_ struct{}
}

// KeysConfig bounds the key table.
type KeysConfig struct {
	// MaxKeys is the number of distinct service::operation keys remembered (1-10,000,000); the
	// rest share one overflow key. Default 10000. About 100 bytes per key.
	MaxKeys int `mapstructure:"max_keys"`
	// prevent unkeyed literal initialization
	_ struct{}
}

// KeyedConfig tunes `keyed` mode.
type KeyedConfig struct {
	// Memory is the time constant of a key's latency memory (> 0); a key forgets at most one
	// part in 256 per span, whatever the time. Default 10m.
	Memory time.Duration `mapstructure:"memory"`
	// MinKeyCount is the number of spans a key must have learned before it is judged
	// (1-1,000,000). Default 8.
	MinKeyCount int `mapstructure:"min_key_count"`
	// ContextWindow is how far back a key's and a service's recent spans are taken together
	// (time constant, > 0). Default 5s.
	ContextWindow time.Duration `mapstructure:"context_window"`
	// Sides is which side of a key's latency is anomalous: `slower` (default) or `both`.
	Sides string `mapstructure:"sides"`
	// prevent unkeyed literal initialization
	_ struct{}
}

var _ component.Config = (*Config)(nil)

// durationKeys are the configuration's durations. They are written in the one duration grammar
// of SCALE, Go's time.ParseDuration (250us, 1m30s, 1h; rust/core/testdata/durations.txt has the
// cases both sides check). A bare number is refused, except 0: it would mean nanoseconds here
// and meant milliseconds to the engine.
var durationKeys = []string{"snapshot_interval", "report_interval", "sampler::max_duration", "keyed::memory", "keyed::context_window"}

// Unmarshal refuses bare numbers for durations, then decodes as usual.
func (cfg *Config) Unmarshal(conf *confmap.Conf) error {
	if conf == nil {
		return nil
	}
	var errs []error
	for _, k := range durationKeys {
		if err := bareDuration(conf.Get(k)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", strings.ReplaceAll(k, confmap.KeyDelimiter, "."), err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return conf.Unmarshal(cfg)
}

// bareDuration is an error for a number other than 0 where a duration belongs.
func bareDuration(v any) error {
	var zero bool
	switch n := v.(type) {
	case int:
		zero = n == 0
	case int64:
		zero = n == 0
	case uint64:
		zero = n == 0
	case float64:
		zero = n == 0
	default:
		return nil
	}
	if zero {
		return nil
	}
	return fmt.Errorf("a duration needs a unit, such as 500ms, 30s or 1m30s (a bare number is ambiguous), got %v", v)
}

// Validate checks every setting and reports every problem at once, each naming its YAML key.
// With cgo it then builds the engine once from the settings (and the rules), so that rules
// problems are found by `otelcol validate` too, and frees it.
func (cfg *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	intIn := func(key string, v, lo, hi int64) {
		if v < lo || v > hi {
			bad(key, "must be between %d and %d, got %d", lo, hi, v)
		}
	}
	switch cfg.Mode {
	case ModeKeyed, ModePaper:
	default:
		bad("mode", "must be %q or %q, got %q", ModeKeyed, ModePaper, cfg.Mode)
	}
	s := cfg.Sampler
	intIn("sampler.n_trees", int64(s.NTrees), minNTrees, maxNTrees)
	intIn("sampler.height", int64(s.Height), minHeight, maxHeight)
	intIn("sampler.window_size", int64(s.WindowSize), minWindowSize, maxWindowSize)
	if math.IsNaN(s.KeepBudget) || s.KeepBudget <= 0 || s.KeepBudget >= 1 {
		bad("sampler.keep_budget", "must be greater than 0 and less than 1, got %v", s.KeepBudget)
	}
	if m := s.MinScore; m != nil && (math.IsNaN(*m) || math.IsInf(*m, 0) || *m < 0 || *m > 1) {
		bad("sampler.min_score", "must be between 0 and 1, got %v", *m)
	}
	if cfg.ReportInterval < 0 {
		bad("report_interval", "must not be negative, got %v", cfg.ReportInterval)
	}
	if s.MaxDuration <= 0 {
		bad("sampler.max_duration", "must be a positive duration, got %v", s.MaxDuration)
	}
	if s.TrainSize < minTrainSize {
		bad("sampler.train_size", "must not be negative, got %d", s.TrainSize)
	}
	intIn("keys.max_keys", int64(cfg.Keys.MaxKeys), minMaxKeys, maxMaxKeys)
	k := cfg.Keyed
	if k.Memory <= 0 {
		bad("keyed.memory", "must be a positive duration, got %v", k.Memory)
	}
	intIn("keyed.min_key_count", int64(k.MinKeyCount), minMinKeyCount, maxMinKeyCount)
	if k.ContextWindow <= 0 {
		bad("keyed.context_window", "must be a positive duration, got %v", k.ContextWindow)
	}
	switch k.Sides {
	case SidesSlower, SidesBoth:
	default:
		bad("keyed.sides", "must be %q or %q, got %q", SidesSlower, SidesBoth, k.Sides)
	}
	if len(cfg.Rules) > 0 && cfg.RulesFile != "" {
		bad("rules_file", "rules are given both inline (rules) and in rules_file; use one")
	}
	if cfg.RulesFile != "" {
		if _, err := os.Stat(cfg.RulesFile); err != nil {
			bad("rules_file", "%v", err)
		}
	}
	if cfg.SnapshotInterval < 0 {
		bad("snapshot_interval", "must not be negative, got %v", cfg.SnapshotInterval)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if cgoEnabled {
		spec, err := cfg.engineSpec()
		if err != nil {
			return err
		}
		e, err := newNativeEngine(spec)
		if err != nil {
			return err
		}
		e.Close()
	}
	return nil
}
