// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Codes of the Go wrapper itself, beside libscale's (`Status*` in contract_gen.go).
const (
	// Negative, never returned by libscale.
	statusClosed          int32 = -1 // the wrapper was closed
	statusVersionMismatch int32 = -2 // header and library versions differ
)

// Names of the Go wrapper's own codes.
const (
	statusNameClosed          = "closed"
	statusNameVersionMismatch = "version_mismatch"
)

// Error is a failed libscale call: its status code and message, copied into Go at once.
type Error struct {
	// Code is the `scale_status` code (1000 and up), or a negative code of the Go wrapper.
	Code int32
	// Status is the code's static text (`scale_status_str`).
	Status string
	// Msg is the call's detailed message, if it has one (constructors and file functions).
	Msg string
}

func (e *Error) Error() string {
	if e.Msg == "" || e.Msg == e.Status {
		return fmt.Sprintf("scale engine: %s (%d)", e.Status, e.Code)
	}
	return fmt.Sprintf("scale engine: %s (%d): %s", e.Status, e.Code, e.Msg)
}

// errClosed is returned by calls on a closed engine wrapper.
var errClosed = &Error{Code: statusClosed, Status: statusNameClosed, Msg: "the engine was closed"}

// errNoCgo is the error of the factory and every engine constructor in a build without cgo.
var errNoCgo = errors.New("the scale processor requires CGO_ENABLED=1: it calls libscale through cgo " +
	"(build the collector with cgo; ocb: dist.cgo_enabled: true)")

// statusName is a short, bounded label for a status code (metrics attribute `status`).
func statusName(err error) string {
	var e *Error
	if !errors.As(err, &e) {
		return "other"
	}
	switch e.Code {
	case statusClosed:
		return statusNameClosed
	case statusVersionMismatch:
		return statusNameVersionMismatch
	}
	if name, ok := statusLabels[e.Code]; ok {
		return name
	}
	return "unknown"
}

func actionName(a uint8) string {
	switch a {
	case actionHorizontal:
		return actionHorizontalLabel
	case actionVertical:
		return actionVerticalLabel
	default:
		return "unknown"
	}
}

// decision is a Go copy of `scale_decision`.
type decision struct {
	ruleIndex   uint32
	count       uint32
	windowMs    float64
	thresholdMs float64
	observedMs  float64
	score       float64
	loadRatio   float64
	timeNs      uint64
	spanIndex   uint32
	conflated   uint32
	traceID     [16]byte
	spanID      [8]byte
	action      uint8
}

// ruleReport is a Go copy of `scale_rule_report`, its service name copied out.
type ruleReport struct {
	ruleIndex   uint32
	count       uint32
	inWindow    uint32
	service     string // "" for a rule with a fixed target
	sinceNs     uint64
	untilNs     uint64
	matched     uint64
	breaches    uint64
	windowMs    float64
	thresholdMs float64 // NaN: none
	p50Ms       float64 // NaN: nothing matched
	p90Ms       float64
	p99Ms       float64
	maxMs       float64
}

// batch holds the flat arrays of one engine batch; reused across batches (see scaleProcessor's
// pool), so nothing is allocated per span once the arrays have grown to the largest batch.
type batch struct {
	keyIDs   []uint32
	startNs  []uint64
	endNs    []uint64
	traceIDs []byte // 16 bytes per span
	spanIDs  []byte // 8 bytes per span

	scores []float64
	keep   []uint8
	skip   []uint8

	decisions []decision // the batch's decisions, copied out of raw
	raw       rawDecisions
	lateKeep  []uint32 // a chunked batch's late marks (scale_batch_out.late_keep), n of room
	c         cBatch   // the engine call's argument structs (kept here so they do not escape)

	misses []keyMiss
}

// keyMiss is a span whose key was not in the key cache.
type keyMiss struct {
	index     int
	service   string
	operation string
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// reset sizes the arrays for n spans.
func (b *batch) reset(n int) {
	b.keyIDs = grow(b.keyIDs, n)
	b.startNs = grow(b.startNs, n)
	b.endNs = grow(b.endNs, n)
	b.traceIDs = grow(b.traceIDs, 16*n)
	b.spanIDs = grow(b.spanIDs, 8*n)
	b.scores = grow(b.scores, n)
	b.keep = grow(b.keep, n)
	b.skip = grow(b.skip, n)
	b.decisions = b.decisions[:0]
	clear(b.misses[:cap(b.misses)]) // drop references to the previous batch's strings
	b.misses = b.misses[:0]
}

// engine is what the processor needs from libscale; *nativeEngine implements it, tests may
// substitute a fake (withEngineFactory).
type engine interface {
	// intern returns the key id of service::operation.
	intern(service, operation string) (uint32, error)
	// process scores b's spans into b.scores, b.keep, b.skip and b.decisions, with the results
	// of one engine call per batch (the native engine splits it into short cgo calls); lost
	// counts decisions that fired but did not fit.
	process(nowNs uint64, b *batch) (lost int, err error)
	// ruleNames lists the configuration's rule names by index.
	ruleNames() ([]string, error)
	// ruleReports drains every rule window's evidence since the last call, at nowNs.
	ruleReports(nowNs uint64) ([]ruleReport, error)
	// snapshotToFile writes the engine's state to path atomically.
	snapshotToFile(path string) error
	// Close frees the engine; idempotent, waits for calls in flight.
	Close()
}

// engineFactory creates engines: fresh ones and ones restored from a snapshot file.
type engineFactory struct {
	create  func(spec engineSpec) (engine, error)
	restore func(spec engineSpec, path string) (engine, error)
}

var nativeFactory = engineFactory{
	create: func(spec engineSpec) (engine, error) {
		e, err := newNativeEngine(spec)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return e, nil
	},
	restore: func(spec engineSpec, path string) (engine, error) {
		e, err := restoreNativeEngine(spec, path)
		if err != nil {
			return nil, err
		}
		return e, nil
	},
}

// engineSpec is the engine's configuration as libscale takes it.
type engineSpec struct {
	// settings is the engine YAML (with the rules when they are inline).
	settings []byte
	// rules is the rules file's text; nil without rules_file.
	rules []byte
	// rulesPath names the rules file in messages.
	rulesPath string
	// budgetInTraces counts keep_budget in traces (annotate-only mode, `drop: false`: a
	// sampler downstream keeps whole traces), set on every engine made or restored from spec.
	budgetInTraces bool
}

// engineYAML is the engine's configuration document (rust/core/src/config.rs).
type engineYAML struct {
	Mode    string `yaml:"mode"`
	Sampler struct {
		NTrees      int      `yaml:"n_trees"`
		Height      int      `yaml:"height"`
		WindowSize  int      `yaml:"window_size"`
		KeepBudget  float64  `yaml:"keep_budget,omitempty"`
		MinScore    *float64 `yaml:"min_score,omitempty"`
		MaxDuration string   `yaml:"max_duration"`
		TrainSize   int64    `yaml:"train_size"`
		Seed        uint64   `yaml:"seed"`
	} `yaml:"sampler"`
	Keys struct {
		MaxKeys int `yaml:"max_keys"`
	} `yaml:"keys"`
	Keyed struct {
		Memory        string `yaml:"memory"`
		MinKeyCount   int    `yaml:"min_key_count"`
		ContextWindow string `yaml:"context_window"`
		Sides         string `yaml:"sides"`
	} `yaml:"keyed"`
	Rules any `yaml:"rules,omitempty"`
}

// engineSpec builds the engine YAML from the configuration and reads the rules file.
func (cfg *Config) engineSpec() (engineSpec, error) {
	var doc engineYAML
	doc.Mode = cfg.Mode
	doc.Sampler.NTrees = cfg.Sampler.NTrees
	doc.Sampler.Height = cfg.Sampler.Height
	doc.Sampler.WindowSize = cfg.Sampler.WindowSize
	// A fixed min_score replaces the budget (the engine refuses both).
	if cfg.Sampler.MinScore != nil {
		doc.Sampler.MinScore = cfg.Sampler.MinScore
	} else {
		doc.Sampler.KeepBudget = cfg.Sampler.KeepBudget
	}
	doc.Sampler.MaxDuration = cfg.Sampler.MaxDuration.String() // the one grammar: 50s, 1m30s
	doc.Sampler.TrainSize = cfg.Sampler.TrainSize
	doc.Sampler.Seed = cfg.Sampler.Seed
	doc.Keys.MaxKeys = cfg.Keys.MaxKeys
	doc.Keyed.Memory = cfg.Keyed.Memory.String()
	doc.Keyed.MinKeyCount = cfg.Keyed.MinKeyCount
	doc.Keyed.ContextWindow = cfg.Keyed.ContextWindow.String()
	doc.Keyed.Sides = cfg.Keyed.Sides
	if len(cfg.Rules) > 0 {
		doc.Rules = cfg.Rules
	}
	settings, err := yaml.Marshal(&doc)
	if err != nil {
		return engineSpec{}, fmt.Errorf("rules: cannot be written as YAML: %w", err)
	}
	spec := engineSpec{settings: settings, budgetInTraces: !cfg.Drop}
	if cfg.RulesFile == "" {
		return spec, nil
	}
	// The rules file's text goes to libscale as is, apart from the settings (the *_with_rules
	// constructors, restoring included): its problems cite the file's own lines.
	text, err := os.ReadFile(cfg.RulesFile)
	if err != nil {
		return engineSpec{}, fmt.Errorf("rules_file: %w", err)
	}
	spec.rules, spec.rulesPath = text, cfg.RulesFile
	return spec, nil
}

// rulesFileMessage makes libscale's "rules file:" prefix name the file.
func (s engineSpec) rulesFileMessage(msg string) string {
	if s.rulesPath == "" {
		return msg
	}
	return strings.ReplaceAll(msg, "rules file: ", s.rulesPath+": ")
}
